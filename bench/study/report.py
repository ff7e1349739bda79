"""A study's report, `DIR/report.md`: the results laid out like the paper's tables, with the paper's numbers
beside ours, bootstrap intervals, the paired test behind each "A beats B" claim, and the ROC curves.

The tables, statistics and curves come from `bench.evaluate.leaderboard` and `protocols.stats`; this module only chooses
which rows answer which of the paper's questions. In a confirmatory study (a `[confirm]` table) the levers and claims
are tested on the confirmation rows only (fresh partitions, external pairs), and the development ones are labelled so;
without one, the report says its claims are exploratory.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bench import atomic
from bench.evaluate.leaderboard import render, roc_file, summarise
from bench.evaluate.results import matching, read_tables
from bench.evaluate.select import Selection, select as choose
from bench.study.plan import candidate_name, confirmations
from bench.work import EXTERNAL
from protocols import stats
from protocols.designs import DESIGNS
from protocols.splits import lesion_note

if TYPE_CHECKING:
    from bench.study.plan import StudyData
    from bench.study.workspace import Workspace
    from bench.study.schema import Study

# Menegola et al. 2017 (DESIGN section 4), AUC in %
PAPER_TABLE1 = {  # design -> Table 1 column -> AUC
    "mal-vs-ben": {"none FT": 76.0, "retino no FT": 72.8, "retino FT": 76.0, "imagenet no FT": 79.1,
                   "imagenet FT": 82.5, "double FT": 78.8},
    "mela-vs-ben": {"none FT": 75.7, "retino no FT": 73.5, "retino FT": 75.3, "imagenet no FT": 77.9,
                    "imagenet FT": 80.9, "double FT": 80.9},
    "mela-vs-carc-vs-ben": {"none FT": 73.0, "retino no FT": 71.4, "retino FT": 72.8, "imagenet no FT": 79.4,
                            "imagenet FT": 83.6, "double FT": 81.8},
}
PAPER_TABLE2 = {  # ISIC 2016 official test split, in %: AUC, mAP, ACC, SE, SP
    "1st place (challenge)": (80.4, 63.7, 85.5, 50.7, 94.1),
    "2nd place (challenge)": (80.2, 61.9, 83.1, 57.3, 87.2),
    "3rd place (challenge)": (82.6, 59.8, 83.4, 32.0, 96.1),
    "paper: VGG-16, ImageNet + FT (as printed)": (80.7, 54.9, 79.2, 47.6, 88.1),
    "paper: VGG-16, ImageNet + FT (true SE, SP)": (80.7, 54.9, 79.2, 53.3, 85.5),
}
TABLE2_NOTE = ("The paper's printed SE 47.6 and SP 88.1 are its reference code's precision and negative "
               "predictive value: on ISIC 2016's 75 melanomas and 304 benign lesions the only confusion matrix with "
               "those and ACC 79.2 is TP 40, FN 35, TN 260, FP 44, whose sensitivity is 53.3 and specificity 85.5.")
PAPER_TABLE3 = {"VGG-M": (82.5, 80.9, 83.6), "VGG-16": (83.8, 83.5, 84.5)}  # mal / mela / mela-carc
PAPER_TABLE4 = {"mal-vs-ben": (93.7, 82.5, 58.8, 82.5), "mela-vs-ben": (93.0, 79.6, 56.6, 80.9)}  # low/med/high/all
COLUMNS = [(source, ft) for source in ("none", "retino", "imagenet", "double") for ft in (False, True)]
COLUMN_TITLES = {"none": "no transfer", "retino": "retino", "imagenet": "ImageNet", "double": "double"}
# The paper's claims as (A, B): "A beats B", each a pair of Table 1 columns
CLAIMS = [
    (("imagenet", True), ("imagenet", False), "fine-tuning helps (ImageNet)"),
    (("retino", True), ("retino", False), "fine-tuning helps (Retinopathy)"),
    (("imagenet", True), ("none", True), "transfer from ImageNet beats no transfer"),
    (("imagenet", True), ("retino", True), "ImageNet beats Retinopathy as a source"),
    (("imagenet", True), ("double", True), "ImageNet alone beats double transfer"),
    (("retino", True), ("none", True), "Retinopathy transfer beats no transfer (the paper: it does not)"),
]
LEVELS = ("low", "medium", "high")
CHOSEN = "chosen per fold"  # the levers table's row of `bench.evaluate.select`
ALPHA = 0.05  # family-wise, over every claim a report tests (Holm)
CLAIM_HEADER = "| design | claim | A | B | AUC A − B (95% CI) | bootstrap p | F / t p | Holm p | verdict |"
CLAIM_RULE = "|---|---|---|---|---|---|---|---|---|"
TESTS_NOTE = ("bootstrap p: two-sided, from a paired bootstrap over test lesions ({draws} draws; \"< 2/B\" where none "
              "crossed zero), which holds each fold's trained SVM fixed; F / t p: a test that also counts the variance "
              "of training, Alpaydin's 5x2cv F-test (F) on a 5x2 split, Nadeau and Bengio's corrected resampled t-test "
              "(t) on other folds, none on a single fold. Holm p: Holm's adjustment of the larger of the two, over {family}.")
EXPLORATORY = ("**Exploratory.** {what}, so its configurations were chosen on the folds they are reported on: the "
               "levers and claims below are exploratory, not confirmed. A `[confirm]` table in the study file (fresh "
               "5x2 partitions, `seeds`, or external pairs) makes them confirmatory.")
DEVELOPMENT_NOTE = (" Development rows: the candidates were chosen on these folds, so these tests are not "
                    "confirmatory; the confirmation tables below are.")
CONFIRMATION_NOTE = (" Confirmation rows only: the candidates, the baseline and the pick rule were fixed on the "
                     "development folds and recorded in `ledger.json` when confirmation started; the last row picks "
                     "among the recorded candidates by this data's own validation AUCs. A candidate added or changed "
                     "after that is flagged and is not confirmatory.")
CLAIM_NOTE = ("AUC A − B: mean fold AUC difference with its 95% interval from the bootstrap. " + TESTS_NOTE +
              " Verdict: A beats B (or B beats A) when the Holm p is below 0.05; otherwise the difference may be "
              "chance, as the paper itself warns for some of its own; a single fold gives no verdict.")


@dataclass(frozen=True)
class Scope:
    """The rows one table is computed on: an evaluation's dataset on one partition, or scored by an SVM that learnt
    on another dataset."""

    dataset: str  # as its rows name it: `ph2`, or `ham10000 -> ph2`
    seed: int
    split: str
    role: str = ""  # in the heading: development or which confirmation; empty in a study without confirmation
    confirmation: bool = False


def write(study: Study, ws: Workspace, data: StudyData, flags: dict[str, str]) -> str:
    """Render `ws.leaderboard` (with its ROC PNGs) and `ws.report`; returns a digest of the report text. `flags`:
    candidates added or changed after confirmation started (`bench.study.plan.changed_since`), with why."""
    import hashlib

    results, predictions = read_tables(ws.results, ws.predictions)
    note = _synthetic_note(study) if study.synthetic else ""
    render(results, ws.leaderboard, predictions, note=note)
    text = ReportPage(study, data, results, predictions, flags).markdown()
    atomic.write_text(ws.report, text)
    return hashlib.sha256(text.encode()).hexdigest()


def _synthetic_note(study: Study) -> str:
    names = ", ".join(sorted({study.datasets[e.dataset].adapter for e in study.evaluations
                              if study.datasets[e.dataset].synthetic}))
    return (f"**SYNTHETIC DATA.** The target images ({names}) are procedurally drawn, not photographs of lesions: "
            "these numbers show that the whole pipeline runs and that its comparisons work, and say nothing about "
            "melanoma screening. The paper's numbers are shown for layout only.")


class ReportPage:
    """The report's markdown, built from the study and its tables (the `Report` unit of work runs `write`)."""

    def __init__(self, study: Study, data: StudyData, results: pd.DataFrame, predictions: pd.DataFrame,
                 flags: dict[str, str]):
        self.study, self.data, self.results, self.predictions = study, data, results, predictions
        self.summary = summarise(results)
        self.flags, self.confirmations = flags, confirmations(study)

    def markdown(self) -> str:
        study = self.study
        lines = [f"# Study `{study.name}`", ""]
        lines += [f"> {_synthetic_note(study)}", ""] if study.synthetic else []
        lines += [study.description, ""] if study.description else []
        lines += self.setup()
        lines += [EXPLORATORY.format(what="This study names no confirmation data"), ""] if not study.confirm else []
        for i, evaluation in enumerate(study.evaluations):
            scope, confirming = self.development(i), self.confirming(i)
            if study.confirm and not confirming:
                lines += [EXPLORATORY.format(what=f"No confirmation data covers `{scope.dataset}`"), ""]
            lines += self.levers(i, scope)
            for confirmation in confirming:
                lines += self.levers(i, confirmation) + self.claims(i, confirmation)
            lines += self.table1(i, scope) + ([] if confirming else self.claims(i, scope)) + self.table3(scope)
            lines += self.table4(i, scope) + self.table2(i, scope) + self.referral(i, scope)
            lines += self.curves(i, study.datasets[evaluation.dataset].adapter)
        lines += ["The full leaderboard (every evaluation, mAP/ACC/SE/SP, the commands that regenerate each row): "
                  "[leaderboard.md](leaderboard.md). Per-fold rows: `results.csv`; per-image scores: "
                  "`predictions.csv`.", ""]
        return "\n".join(lines).rstrip() + "\n"

    # --- which rows

    def development(self, i: int) -> Scope:
        """Evaluation i's own rows: the folds its candidates were chosen on."""
        evaluation = self.study.evaluations[i]
        role = "development: chosen and reported on these folds" if self.confirming(i) else ""
        return Scope(self._target(evaluation.train, evaluation.dataset), self.study.seed, evaluation.split, role)

    def confirming(self, i: int) -> list[Scope]:
        """The rows that confirm evaluation i's candidates: fresh partitions, external pairs."""
        dataset = self.study.evaluations[i].dataset
        scopes = []
        for c in (c for c in self.confirmations if c.evaluation == i):
            if c.train:
                role = (f"confirmation: SVM trained on all of {self.study.datasets[c.train].adapter}, scored on all "
                        f"of {self.study.datasets[dataset].adapter}")
                scopes.append(Scope(self._target(c.train, dataset), c.seed, EXTERNAL, role, True))
            else:
                role = f"confirmation: fresh 5x2 partitions, seed {c.seed}"
                scopes.append(Scope(self._target(None, dataset), c.seed, "5x2", role, True))
        return scopes

    def _target(self, train: str | None, dataset: str) -> str:
        """How rows name a dataset of the study's: its adapter, `A -> B` when an SVM learnt on A."""
        target = self.study.datasets[dataset].adapter
        return f"{self.study.datasets[train].adapter} -> {target}" if train else target

    def _claim_scopes(self, i: int) -> list[Scope]:
        return self.confirming(i) or [self.development(i)]

    # --- parts

    def setup(self) -> list[str]:
        study, recipe = self.study, self.study.recipe
        trains = "the whole network" if recipe.train_last is None else f"the last {recipe.train_last} layers"
        trains += f" from a pool of {recipe.views} cached trunk views per image" if recipe.views else ""
        trains += "".join(f", {said}" for said in recipe.departures())
        lines = ["## Setup", "",
                 f"- Training recipe `{recipe.name}`: {recipe.epochs} epoch(s), lr {recipe.lr:g}, momentum "
                 f"{recipe.momentum:g}, L2 {recipe.weight_decay:g}, {recipe.image_size} px, batch "
                 f"{recipe.batch_size}, training {trains}; seed {study.seed}."]
        if study.scratch_recipe:
            scratch = study.scratch_recipe
            lines.append(f"- Runs from random weights train the whole network for {scratch.epochs} epoch(s) at "
                         f"{scratch.image_size} px, lr {scratch.lr:g}, batch {scratch.batch_size}"
                         + "".join(f", {said}" for said in scratch.departures()) + ".")
        for name, spec in study.datasets.items():
            n = len(self.data.manifests[name])
            limit = f", first {spec.limit} used for training" if spec.limit else ""
            lines.append(f"- Dataset `{name}`: adapter `{spec.adapter}`, {n} images{limit}"
                         + (f", options {spec.options}" if spec.options else "") + ".")
        for backbone, dataset in study.sources.items():
            lines.append(f"- Source stage: `{backbone}` trained on `{dataset}` (its own start, see `bench backbones`).")
        for spec in study.backbones.values():
            weights = f"random weights in {spec.like}'s architecture" if spec.random else f"{spec.like}'s weights"
            trained = f", trained on `{spec.source}`" if spec.source else ""
            lines.append(f"- Backbone `{spec.name}`, defined by the study: {weights}{trained}.")
        for i, evaluation in enumerate(study.evaluations):
            folds = self.data.fold_keys[i]
            note = lesion_note(self.data.manifests[evaluation.dataset], evaluation.dataset)
            lines.append(f"- Evaluated on `{evaluation.dataset}` with split `{evaluation.split}`, folds "
                         f"{', '.join(folds)}: class-balanced linear SVM on L2-normalised features, C chosen on each "
                         "training fold by the mean AUC over 10 lesion-grouped validation folds."
                         + (f" **Note:** {note}." if note else ""))
        if study.confirm:
            confirmed = ", ".join(f"`{scope.dataset}` ({scope.role.removeprefix('confirmation: ')})"
                                  for i in range(len(study.evaluations)) for scope in self.confirming(i))
            lines.append(f"- Confirmation: the candidates were chosen on the development folds (seed {study.seed}) "
                         f"and are tested on {confirmed}; the candidate list and a fingerprint of each choice "
                         "were recorded in `ledger.json` when confirmation started.")
        if study.transfer:
            roles = ", ".join(f"{COLUMN_TITLES[c]} = `{b}`" for c, b in study.transfer.items())
            lines.append(f"- Transfer sources (Table 1 columns): {roles}.")
        return lines + ["", "AUC in %, mean over folds, with its 95% bootstrap interval (test lesions resampled); "
                        "in brackets the paper's figure, which is another dataset and network (VGG-M on the "
                        "Interactive Atlas of Dermoscopy): a reference point, not a like-for-like comparison.", ""]

    def row(self, scope: Scope, protocol: str, backbone: str | None, finetuned: bool) -> pd.Series | None:
        if backbone is None:
            return None
        hit = matching(self.summary, dataset=scope.dataset, seed=scope.seed, protocol=protocol, backbone=backbone,
                       finetuned=finetuned)
        return hit.iloc[0] if len(hit) else None

    def table1(self, i: int, scope: Scope) -> list[str]:
        transfer = self.study.transfer
        evaluation = self.study.evaluations[i]
        if not transfer or not any(self.row(scope, p, transfer.get(c), ft) is not None
                                   for p in evaluation.protocols for c, ft in COLUMNS):
            return []
        header = [f"{COLUMN_TITLES[c]} {'FT' if ft else 'no FT'}" for c, ft in COLUMNS]
        lines = [f"## Table 1 · {scope.dataset}: transfer source × fine-tuning (AUC %)", "",
                 "| design | " + " | ".join(header) + " |", "|---|" + "---|" * len(COLUMNS)]
        for protocol in evaluation.protocols:
            cells = []
            for column, ft in COLUMNS:
                r = self.row(scope, protocol, transfer.get(column), ft)
                paper = PAPER_TABLE1.get(protocol, {}).get(f"{column} {'FT' if ft else 'no FT'}")
                cells.append(_auc_cell(r, paper))
            lines.append(f"| {protocol} | " + " | ".join(cells) + " |")
        backbones = ", ".join(f"{COLUMN_TITLES[c]}: `{b}`" for c, b in transfer.items())
        return lines + ["", f"Backbones: {backbones}. The paper used VGG-M throughout. Empty: not run in this "
                        "study.", ""]

    def claims(self, i: int, scope: Scope) -> list[str]:
        """The paired tests behind each of the paper's "A beats B" claims, per design."""
        rows = [self._claim_row(*test, claim) for test, claim in self._claims(i, scope)]
        rows = [row for row in rows if row]
        if not rows:
            return []
        role = f" · {scope.role}" if scope.role else ""
        return [f"### The paper's claims, tested (paired, on the same folds and test images){role}", "",
                CLAIM_HEADER, CLAIM_RULE, *rows, "",
                CLAIM_NOTE.format(draws=self.study.bootstrap_draws, family="every test in this report"), ""]

    def _claims(self, i: int, scope: Scope) -> list[tuple[tuple, str]]:
        transfer = self.study.transfer
        return [((scope, protocol, (transfer[a[0]], a[1]), (transfer[b[0]], b[1])), claim)
                for protocol in self.study.evaluations[i].protocols for a, b, claim in CLAIMS
                if a[0] in transfer and b[0] in transfer]

    def _architecture_claims(self, scope: Scope) -> list[tuple[tuple, str]]:
        first, *others = self.study.architectures or [None]
        return [((scope, protocol, (other, True), (first, True)), f"{other} vs {first}")
                for other in others for protocol in self._table3_protocols(scope)]

    @cached_property
    def tests(self) -> dict[tuple, tuple[stats.Comparison, stats.PValue]]:
        """Every paired test this report makes, with its Holm-adjusted p-value: the family is the whole report, so
        the chance of any false "beats" verdict in it stays below ALPHA."""
        keys = [test for i in range(len(self.study.evaluations)) for scope in self._claim_scopes(i)
                for test, _ in self._claims(i, scope) + self._architecture_claims(scope)]
        done = {}
        for scope, protocol, a, b in dict.fromkeys(keys):
            pa, pb = self._predictions(scope, protocol, *a), self._predictions(scope, protocol, *b)
            if pa is not None and pb is not None:
                done[scope, protocol, a, b] = self._compare(pa, pb)
        adjusted = stats.holm([c.verdict_p for c in done.values()])
        return {key: (c, p) for (key, c), p in zip(done.items(), adjusted)}

    def _claim_row(self, scope: Scope, protocol: str, a: tuple[str, bool], b: tuple[str, bool], claim: str) -> str:
        if (scope, protocol, a, b) not in self.tests:
            return ""
        result, adjusted = self.tests[scope, protocol, a, b]
        d = result.difference
        verdict = "no clear difference" if result.test else "one fold: no verdict"
        if adjusted.value < ALPHA:
            verdict = "**A beats B**" if d.estimate > 0 else "**B beats A**"
        return (f"| {protocol} | {claim} | {_name(*a)} | {_name(*b)} | {_difference(d)} | {_tests(result, adjusted)} "
                f"| {verdict} |")

    def _compare(self, a: pd.DataFrame, b: pd.DataFrame) -> stats.Comparison:
        return stats.paired_comparison(a, b, n_boot=self.study.bootstrap_draws, seed=self.study.seed)

    def _predictions(self, scope: Scope, protocol: str, backbone: str, finetuned: bool) -> pd.DataFrame | None:
        rows = matching(self.predictions, dataset=scope.dataset, seed=scope.seed, protocol=protocol, backbone=backbone,
                        finetuned=finetuned)
        # one CSV holds every design: the 3-class score columns are empty on the binary designs' rows
        return rows.dropna(axis=1, how="all").reset_index(drop=True) if len(rows) else None

    def levers(self, i: int, scope: Scope) -> list[str]:
        """Each frozen configuration against the study's baseline: AUC, its interval, the paired test (Holm-adjusted
        over the configurations of one design)."""
        baseline, evaluation = self.study.baseline, self.study.evaluations[i]
        if baseline is None:
            return []
        role = f" ({scope.role})" if scope.role else ""
        lines = [f"## Levers · {scope.dataset}{role}: each configuration against frozen `{baseline}`", "",
                 "| design | features | AUC % (mean ± sd over folds) | 95% CI | Δ AUC vs baseline (95% CI) | "
                 "bootstrap p | F / t p | Holm p |", "|---|---|---|---|---|---|---|---|"]
        for protocol in evaluation.protocols:
            base = self._predictions(scope, protocol, baseline, False)
            rows = [(f, self.row(scope, protocol, f, False)) for f in evaluation.frozen]
            rows = [(f, r) for f, r in rows if r is not None]
            scores = {f: self._predictions(scope, protocol, f, False) for f, _ in rows}
            flags = {f: why for f, _ in rows if scope.confirmation
                     and (why := self.flags.get(candidate_name(evaluation.dataset, protocol, f)))}
            chosen = self._chosen(scope, protocol, [f for f, _ in rows if f not in flags])
            if chosen is not None:  # the honest "best configuration": picked inside each fold
                rows.append((CHOSEN, summarise(chosen.results).iloc[0]))
                scores[CHOSEN] = chosen.predictions
            tests = {f: self._compare(scores[f], base) for f, _ in rows if f != baseline and base is not None}
            adjusted = dict(zip(tests, stats.holm([t.verdict_p for t in tests.values()])))
            for features, r in rows:
                test = tests.get(features)
                versus = f"{_difference(test.difference)} | {_tests(test, adjusted[features])}" if test else \
                    "baseline | | | "
                name = _picks(chosen) if features == CHOSEN else f"`{features}`"
                name += f" ({flags[features]}: not confirmatory)" if features in flags else ""
                lines.append(f"| {protocol} | {name} | {stats.format_mean_sd(r['auc'], r['auc_sd'])} | "
                             f"{100 * r['auc_ci_low']:.1f}–{100 * r['auc_ci_high']:.1f} | {versus} |")
        return lines + ["", "Paired tests on the same folds and test images. " + TESTS_NOTE.format(
                            draws=self.study.bootstrap_draws, family="the configurations compared with the baseline "
                            "in one design") + " The best row by test AUC is "
                        "an optimistic estimate (the maximum of noisy figures, chosen on the images it is reported "
                        "on); the last row is not: in each fold it takes the configuration with the highest "
                        "validation AUC on that fold's training part (`bench select`) and scores its test part."
                        + (CONFIRMATION_NOTE if scope.confirmation else DEVELOPMENT_NOTE if scope.role else ""), ""]

    def _chosen(self, scope: Scope, protocol: str, candidates: list[str]) -> Selection | None:
        """The configuration picked per fold by validation AUC, where there is a choice and it was recorded."""
        rows = matching(self.results, dataset=scope.dataset, seed=scope.seed, protocol=protocol, finetuned=False)
        recorded = "validation_auc" in rows and rows["validation_auc"].notna().all()
        if len(candidates) < 2 or not recorded:
            return None
        return choose(self.results, self.predictions, candidates, dataset=scope.dataset, protocol=protocol,
                      split=scope.split, seed=scope.seed)

    def table2(self, i: int, scope: Scope) -> list[str]:
        """Every metric on an official train/test split (the paper's Table 2 is ISIC 2016's)."""
        if scope.split != "official":
            return []
        s = matching(self.summary, dataset=scope.dataset, seed=scope.seed, split="official")
        lines = [f"## Table 2 · {scope.dataset}: official test split (%)", "",
                 "| model | design | AUC | mAP | ACC | SE | SP |", "|---|---|---|---|---|---|---|"]
        for r in s.sort_values("auc", ascending=False).itertuples():
            cells = [f"{100 * getattr(r, m):.1f}" for m in ("auc", "map", "acc", "se", "sp")]
            lines.append(f"| {_name(r.backbone, r.finetuned)} | {r.protocol} | " + " | ".join(cells) + " |")
        for name, values in PAPER_TABLE2.items():
            lines.append(f"| *{name}* | mela-vs-ben | " + " | ".join(f"*{v:.1f}*" for v in values) + " |")
        return lines + ["", f"Italic rows: the paper's Table 2 (ISIC 2016 test set), for reference. {TABLE2_NOTE}", ""]

    def _table3_protocols(self, scope: Scope) -> list[str]:
        first = next(iter(self.study.architectures), None)
        return [p for p in DESIGNS if self.row(scope, p, first, True) is not None]

    def table3(self, scope: Scope) -> list[str]:
        """Architectures compared, all with ImageNet transfer and fine-tuning."""
        protocols = self._table3_protocols(scope)
        if len(self.study.architectures) < 2 or not protocols:
            return []
        lines = [f"## Table 3 · {scope.dataset}: architecture (ImageNet + FT, AUC %)", "",
                 "| architecture | " + " | ".join(protocols) + " |", "|---|" + "---|" * len(protocols)]
        for backbone in self.study.architectures:
            cells = [_auc_cell(self.row(scope, p, backbone, True), None) for p in protocols]
            lines.append(f"| {backbone} | " + " | ".join(cells) + " |")
        order = list(DESIGNS)
        for name, values in PAPER_TABLE3.items():
            lines.append(f"| *paper: {name}* | " + " | ".join(f"*{values[order.index(p)]:.1f}*" for p in protocols)
                         + " |")
        tests = [row for test, claim in self._architecture_claims(scope) if (row := self._claim_row(*test, claim))]
        if tests:
            lines += ["", CLAIM_HEADER.replace("claim", "comparison"), CLAIM_RULE, *tests]
        return lines + [""]

    def table4(self, i: int, scope: Scope) -> list[str]:
        """AUC by the dataset's own difficulty grading, for ImageNet + FT (the paper's Table 4)."""
        manifest = self.data.manifests[self.study.evaluations[i].dataset]
        backbone = self.study.transfer.get("imagenet")
        if "difficulty" not in manifest or manifest["difficulty"].isna().all() or backbone is None:
            return []
        difficulty = manifest.set_index("image_id")["difficulty"].astype(str)
        rows = []
        for protocol in self.study.evaluations[i].protocols:
            predictions = self._predictions(scope, protocol, backbone, True)
            r = self.row(scope, protocol, backbone, True)
            if predictions is None or r is None:
                continue
            by_level = stats.auc_by_difficulty(predictions, difficulty).set_index("difficulty")["auc"]
            paper = PAPER_TABLE4.get(protocol)
            cells = [_percent(by_level.get(level), paper[k] if paper else None) for k, level in enumerate(LEVELS)]
            cells.append(_percent(r["auc"], paper[3] if paper else None))
            rows.append(f"| {protocol} | " + " | ".join(cells) + " |")
        if not rows:
            return []
        return [f"## Table 4 · {scope.dataset}: AUC by diagnostic difficulty ({_name(backbone, True)}, %)", "",
                "| design | low | medium | high | all |", "|---|---|---|---|---|", *rows, "",
                "Paper's figures (VGG-M, ImageNet + FT, Atlas) in brackets.", ""]

    def referral(self, i: int, scope: Scope) -> list[str]:
        """The paper's conclusion, measured: refer the confident positives and the uncertain cases; how many
        positives (melanomas; in mal-vs-ben melanomas and carcinomas) are caught for a given share of cases
        referred (ImageNet + FT, the paper's best)."""
        backbone = self.study.transfer.get("imagenet")
        rows = []
        for protocol in self.study.evaluations[i].protocols:
            predictions = self._predictions(scope, protocol, backbone, True) if backbone else None
            if predictions is None:
                continue
            table = stats.referral(predictions, DESIGNS[protocol].positive)
            fixed = len(stats.REFERRAL_FRACTIONS)  # rows: SE at fixed shares referred, then shares for target SEs
            cells = [f"{100 * se:.0f}" for se in table["sensitivity"][:fixed]]
            cells += [f"{100 * share:.0f}" for share in table["referred"][fixed:]]
            rows.append(f"| {protocol} | " + " | ".join(cells) + " |")
        if not rows:
            return []
        header = [f"SE, {100 * f:.0f}% referred" for f in stats.REFERRAL_FRACTIONS]
        header += [f"referred for SE {100 * t:.0f}%" for t in stats.REFERRAL_TARGETS]
        title = f"## Referral · {scope.dataset}: positives caught against cases referred ({_name(backbone, True)})"
        return [title, "",
                "| design | " + " | ".join(header) + " |", "|---|" + "---|" * len(header), *rows, "",
                "Cases are referred in order of decreasing positive-class score, which refers the confident positives "
                "and the low-confidence cases first, as the paper's conclusion proposes. In %, averaged over folds.",
                ""]

    def curves(self, i: int, dataset: str) -> list[str]:
        """Evaluation i's ROC figures: its dataset's, and those of the external pairs that confirm it."""
        targets = [dataset] + [scope.dataset for scope in self.confirming(i) if scope.split == EXTERNAL]
        # a paragraph each: figures in one paragraph would be drawn side by side
        lines = [line for target in targets for protocol in self.study.evaluations[i].protocols
                 for line in (f"![ROC curves, {target} {protocol}]({roc_file(target, protocol)})", "")]
        return [f"## ROC curves · {dataset} (melanoma vs. rest, averaged over folds)", "", *lines] if lines else []


def _picks(chosen: Selection) -> str:
    """'chosen per fold by validation AUC: `a` ×6, `b` ×4'."""
    counts = chosen.choices["chosen"].value_counts()
    return "chosen per fold by validation AUC: " + ", ".join(f"`{name}` ×{n}" for name, n in counts.items())


def _difference(d: stats.Interval) -> str:
    return f"{100 * d.estimate:+.1f} ({100 * d.low:+.1f} to {100 * d.high:+.1f})"


def _tests(result: stats.Comparison, adjusted: stats.PValue) -> str:
    """The cells `bootstrap p | F / t p | Holm p`."""
    training = f"{stats.PValue(result.test_p_value)} ({result.test[-1]})" if result.test else "–"
    return f"{result.bootstrap_p} | {training} | {adjusted}"


def _name(backbone: str, finetuned: bool) -> str:
    return f"{backbone} {'FT' if finetuned else 'no FT'}"


def _percent(value: float | None, paper: float | None) -> str:
    text = "–" if value is None or np.isnan(value) else f"{100 * value:.1f}"
    return text + (f" [{paper:.1f}]" if paper is not None else "")


def _auc_cell(r: pd.Series | None, paper: float | None) -> str:
    paper_text = f" [{paper:.1f}]" if paper is not None else ""
    if r is None:
        return f"–{paper_text}" if paper is not None else ""
    ci = "" if np.isnan(r["auc_ci_low"]) else f" ({100 * r['auc_ci_low']:.1f}–{100 * r['auc_ci_high']:.1f})"
    return f"{100 * r['auc']:.1f}{ci}{paper_text}"
