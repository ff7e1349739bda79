"""`bench select`: one configuration chosen inside each fold by validation AUC, and scored on that fold's test part.

Reporting the best of several configurations by their test AUC is optimistic: it is the maximum of noisy
estimates, chosen on the very images it is reported on. Here each fold picks, among evaluations already in a
results table, the one whose SVM reached the highest mean validation AUC (the lesion-grouped validation folds of
that fold's training part, the same ones that chose C), so no test image takes part in the choice. The picks'
test predictions are then scored like any other evaluation: the selected pipeline is one more leaderboard row,
and `bench compare` tests it against a baseline.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from datetime import datetime, timezone

import pandas as pd

from bench.errors import BenchError
from bench.evaluate.results import matching
from protocols.stats import bootstrap_auc


@dataclass(frozen=True)
class Selection:
    name: str  # what the tables call the selected pipeline (their `backbone` column)
    choices: pd.DataFrame  # per fold: the chosen candidate, its validation AUC, its test AUC
    results: pd.DataFrame  # the chosen candidates' fold rows, relabelled
    predictions: pd.DataFrame  # their test predictions, relabelled


def pick_name(candidates: list[str]) -> str:
    return f"select[{'; '.join(candidates)}]"  # no '|': the name is a markdown table cell too


def select(results: pd.DataFrame, predictions: pd.DataFrame, candidates: list[str], *, dataset: str, protocol: str,
           split: str = "5x2", seed: int = 0, finetuned: bool = False, command: str = "") -> Selection:
    """Per fold of the partition `seed` made, the candidate with the highest validation AUC (a tie goes to the one
    listed first)."""
    if len(set(candidates)) < 2:
        raise BenchError("name at least two different evaluated configurations to select among")
    identity = {"dataset": dataset, "protocol": protocol, "split": split, "seed": seed, "finetuned": finetuned}
    rows = pd.concat([_candidate_rows(results, c, identity) for c in candidates], ignore_index=True)
    folds = _common_folds(rows, candidates)
    rank = {c: i for i, c in enumerate(candidates)}
    chosen = (rows.assign(order=rows["backbone"].map(rank))
              .sort_values(["fold", "validation_auc", "order"], ascending=[True, False, True])
              .drop_duplicates("fold").drop(columns="order"))
    name = pick_name(candidates)
    picked = pd.concat([matching(predictions, **identity, backbone=r.backbone, fold=r.fold)
                        for r in chosen.itertuples()], ignore_index=True)
    if picked.groupby("fold").size().reindex(folds).isna().any():
        raise BenchError("the predictions table lacks some chosen configuration's test scores: evaluate each "
                         "candidate with `--predictions` pointing at it")
    picked = picked.assign(backbone=name)
    ci = bootstrap_auc(picked, seed=seed)
    fold_rows = chosen.assign(selected=chosen["backbone"], backbone=name, auc_ci_low=ci.low, auc_ci_high=ci.high,
                              command=command, created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    choices = chosen[["fold", "backbone", "validation_auc", "auc"]].rename(columns={"backbone": "chosen"})
    return Selection(name, choices.reset_index(drop=True), fold_rows.reset_index(drop=True), picked)


def command(candidates: list[str], *, dataset: str, protocol: str, split: str, seed: int, finetuned: bool,
            results: str, predictions: str) -> str:
    """The `bench select` command line that regenerates a selection's rows."""
    args = ["bench", "select", *candidates, "--protocol", protocol, "--dataset", dataset, "--split", split]
    args += ["--seed", str(seed)] if seed else []
    args += ["--finetuned"] * finetuned + ["--results", results, "--predictions", predictions]
    return shlex.join(args)


def _candidate_rows(results: pd.DataFrame, candidate: str, identity: dict) -> pd.DataFrame:
    rows = matching(results, **identity, backbone=candidate)
    if rows.empty:
        raise BenchError(f"no {identity['dataset']} {identity['protocol']} results for {candidate!r} (split "
                         f"{identity['split']}, seed {identity['seed']}): run `bench evaluate --backbone ...` for it "
                         "with these --results first")
    if "validation_auc" not in rows or rows["validation_auc"].isna().any():
        raise BenchError(f"the results of {candidate!r} predate recorded validation AUCs: run its `bench evaluate` "
                         f"again ({rows['command'].iloc[0]})")
    return rows


def _common_folds(rows: pd.DataFrame, candidates: list[str]) -> list[str]:
    by_candidate = rows.groupby("backbone")["fold"].apply(set)
    folds = set.intersection(*by_candidate)
    missing = {c: sorted(by_candidate[c] - folds) for c in candidates if by_candidate[c] - folds}
    if missing:
        raise BenchError(f"the candidates were evaluated on different folds ({missing} only in some): evaluate "
                         "them all on the same folds")
    return sorted(folds)
