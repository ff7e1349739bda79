"""`bench compare`: paired tests of two backbones on the same folds and test images."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape

from bench.cli.app import app
from bench.cli.options import (Dataset, DatasetOptions, EvaluateSplit, Finetuned, JsonOption, Protocol, ReferenceDir,
                               RootOption, Seed, StoreOption, TrainDataset, TrainOptions, TrainRoot, parse_pairs)
from bench.cli.output import console, print_json
from bench.errors import BenchError

if TYPE_CHECKING:
    import pandas as pd

    from protocols.stats import Comparison


@app.command()
def compare(
    a: Annotated[str, typer.Argument(help="First backbone.")],
    b: Annotated[str, typer.Argument(help="Second backbone.")],
    protocol: Protocol,
    dataset: Dataset,
    finetuned: Finetuned = False,
    split: EvaluateSplit = None,
    reference_dir: ReferenceDir = None,
    seed: Seed = 0,
    store: StoreOption = None,
    root: RootOption = None,
    option: DatasetOptions = [],  # noqa: B006 (typer reads it)
    predictions: Annotated[Optional[Path], typer.Option(
        help="Read both backbones' test scores from this file instead of recomputing them.")] = None,
    draws: Annotated[Optional[int], typer.Option(
        min=100, help="Bootstrap draws (default 10000): with B draws the smallest p it can show is 2/B.")] = None,
    as_json: JsonOption = False,
    train_dataset: TrainDataset = None,
    train_root: TrainRoot = None,
    train_option: TrainOptions = [],  # noqa: B006 (typer reads it)
) -> None:
    """Paired tests of two backbones' mean AUC on the same folds and test images: a cluster bootstrap over test
    lesions, and a test that counts training variance too (the 5x2cv F-test on a 5x2 split, the corrected resampled
    t-test on other folds); the verdict takes the larger p."""
    from bench.context import Context
    from bench.evaluate.score import evaluate as run_evaluation
    from bench.work import EXTERNAL, DatasetRef, Evaluate
    from protocols import stats

    training = DatasetRef.of(train_dataset, train_root, parse_pairs(train_option, "--train-option")) \
        if train_dataset else None
    split = split or (EXTERNAL if training else "5x2")

    def scores(backbone: str) -> pd.DataFrame:
        unit = Evaluate(backbone, DatasetRef.of(dataset, root, parse_pairs(option)), protocol, split,
                        finetuned=finetuned, seed=seed, reference=reference_dir, train_dataset=training)
        if predictions is not None:
            return _stored_predictions(predictions, unit.target, protocol, backbone, finetuned, split, seed)
        return run_evaluation(unit, Context.for_user(store)).predictions

    draws = draws or stats.TEST_DRAWS
    result = stats.paired_comparison(scores(a), scores(b), n_boot=draws, seed=seed)
    d, boot, verdict = result.difference, result.bootstrap_p, result.verdict_p
    if as_json:
        print_json({"dataset": dataset, "protocol": protocol, "split": split, "finetuned": finetuned, "a": a, "b": b,
                    "auc_difference": d.estimate, "ci_low": d.low, "ci_high": d.high, "folds": result.folds,
                    "draws": draws, "bootstrap_p": boot.value, "bootstrap_p_is_bound": boot.bound,
                    "test": result.test or None, "statistic": _finite(result.statistic),
                    "test_p_value": _finite(result.test_p_value), "verdict_p": _finite(verdict.value)})
        return
    console.print(f"{dataset} · {protocol} · split {split}{' · fine-tuned' if finetuned else ''}: "
                  f"AUC({escape(a)}) - AUC({escape(b)}) = {100 * d.estimate:+.1f} points, 95% CI {100 * d.low:+.1f} to "
                  f"{100 * d.high:+.1f}, two-sided p {'' if boot.bound else '= '}{boot} (paired bootstrap over test "
                  f"lesions, {draws} draws, {result.folds} folds)", highlight=False)
    console.print(_training_test(result), highlight=False)
    if result.test:
        console.print(f"verdict p = {verdict} (the larger of the two)", highlight=False)


def _training_test(result: Comparison) -> str:
    from protocols.stats import PValue

    p = PValue(result.test_p_value)
    if result.test == "5x2cv F":
        return (f"5x2cv paired F-test (Alpaydin 1999), counting training variance: F = {result.statistic:.2f}, "
                f"p = {p} (F(10, 5))")
    if result.test:
        return (f"corrected resampled t-test (Nadeau and Bengio 2003), counting training variance: t = "
                f"{result.statistic:.2f}, p = {p} (t({result.folds - 1}))")
    return "one fold: training variance is not measured, so no test counts it and no verdict is drawn"


def _finite(value: float) -> float | None:
    """JSON has no NaN: a test that did not apply is null."""
    return None if math.isnan(value) else value


def _stored_predictions(path: Path, dataset: str, protocol: str, backbone: str, finetuned: bool,
                        split: str, seed: int) -> pd.DataFrame:
    from bench.evaluate.results import matching, read_table

    rows = matching(read_table(path), dataset=dataset, protocol=protocol, backbone=backbone, finetuned=finetuned,
                    split=split, seed=seed)
    if rows.empty:
        raise BenchError(f"{path} has no predictions for {backbone} ({dataset}, {protocol}, split {split}, seed "
                         f"{seed}{', fine-tuned' if finetuned else ''}): run `bench evaluate ... --predictions {path}`")
    return rows.dropna(axis=1, how="all")
