"""`bench evaluate`, `bench compare`, `bench select`, `bench leaderboard` and `bench perf evaluate`.

The evaluation and its statistics are imported when a command runs: `bench --help` does not pay for them."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape

from bench.cli.app import app, perf_app
from bench.cli.options import (DatasetOptions, DesignName, JsonOption, RootOption, SplitName, StoreOption, TTAName,
                               parse_pairs)
from bench.cli.output import console, err_console, print_json, table
from bench.errors import BenchError
from bench.paths import DEFAULT_LEADERBOARD, DEFAULT_RESULTS

if TYPE_CHECKING:
    import pandas as pd

    from bench.context import Context
    from bench.evaluate.score import Evaluation
    from bench.work import Evaluate
    from protocols.stats import Comparison

Protocol = Annotated[DesignName, typer.Option(help="Label design.")]
Dataset = Annotated[str, typer.Option(help="Dataset adapter (see `bench datasets`).")]
Backbone = Annotated[str, typer.Option(help="Backbone whose features are scored (see `bench backbones`); A+B scores "
                                             "the concatenation of A's and B's L2-normalised sets.")]
TTA = Annotated[Optional[TTAName], typer.Option("--tta", help="Score the sets extracted with `bench extract --tta`.")]
PowerNorm = Annotated[bool, typer.Option("--power-norm", help="Signed square root of every feature before L2 "
                                                              "normalisation (recorded in the results).")]
Finetuned = Annotated[bool, typer.Option("--finetuned", help="Use each fold's fine-tuned set ft-<protocol>-<fold>.")]
Split = Annotated[SplitName, typer.Option(help="How folds are made.")]
EvaluateSplit = Annotated[Optional[SplitName], typer.Option(
    help="How folds are made (default 5x2; with --train-dataset, default: no folds, all of --dataset is scored).")]
TrainDataset = Annotated[Optional[str], typer.Option(
    help="External evaluation: fit the SVM on all of this dataset (adapter), score --dataset (with --split, each "
         "fold's SVM learns on both this and the fold's training part).")]
TrainRoot = Annotated[Optional[Path], typer.Option(help="Folder holding --train-dataset's files.")]
TrainOptions = Annotated[list[str], typer.Option("--train-option", help="--train-dataset adapter option key=value.")]
DropOverlap = Annotated[bool, typer.Option(
    "--drop-overlap", help="Leave out (and count in each row) scored images that are pictures a source stage or "
                           "the training dataset holds, instead of refusing to score them.")]
ReferenceDir = Annotated[Optional[Path], typer.Option(help="The paper's fold files (a folder or one .yml file).")]
KeepDuplicates = Annotated[bool, typer.Option("--keep-duplicate-folds",
                                              help="Reference split: also run the repeated partitions.")]
Folds = Annotated[list[str], typer.Option(
    "--fold", help="Only this fold (repeatable), e.g. r0f0 where only it was fine-tuned; default: every fold.")]
Seed = Annotated[int, typer.Option(help="Seeds the 5x2 folds, the validation split and the bootstrap.")]
Results = Annotated[Path, typer.Option(help="Results table: one row per fold, replaced by key.")]
Predictions = Annotated[Optional[Path], typer.Option(help="Per-image test scores (CSV, .csv.gz to compress).")]


@app.command()
def evaluate(
    protocol: Protocol,
    dataset: Dataset,
    backbone: Backbone,
    finetuned: Finetuned = False,
    split: EvaluateSplit = None,
    reference_dir: ReferenceDir = None,
    keep_duplicate_folds: KeepDuplicates = False,
    seed: Seed = 0,
    store: StoreOption = None,
    root: RootOption = None,
    option: DatasetOptions = [],  # noqa: B006 (typer reads it)
    results: Results = DEFAULT_RESULTS,
    predictions: Predictions = None,
    fold: Folds = [],  # noqa: B006 (typer reads it)
    as_json: JsonOption = False,
    tta: TTA = None,
    power_norm: PowerNorm = False,
    train_dataset: TrainDataset = None,
    train_root: TrainRoot = None,
    train_option: TrainOptions = [],  # noqa: B006 (typer reads it)
    drop_overlap: DropOverlap = False,
) -> None:
    """Score a feature set with the paper's linear-SVM protocol on every fold; write results (and predictions).

    With --train-dataset A, an external evaluation: the SVM learns on all of A (C chosen on its lesion-grouped
    validation folds) and is scored on all of --dataset B; its rows are keyed `A -> B`."""
    from bench.context import Context
    from bench.evaluate.score import evaluate as run_evaluation
    from bench.evaluate.leaderboard import summarise
    from bench.evaluate.results import KEY, PREDICTION_KEY, check_writable, upsert
    from bench.work import EXTERNAL, DatasetRef, Evaluate

    check_writable(results, predictions)  # before the work: an unwritable file must not cost the scores
    training = DatasetRef.of(train_dataset, train_root, parse_pairs(train_option, "--train-option")) \
        if train_dataset else None
    unit = Evaluate(backbone, DatasetRef.of(dataset, root, parse_pairs(option)), protocol,
                    split or (EXTERNAL if training else "5x2"), tuple(fold), finetuned, seed, reference=reference_dir,
                    tta=tta, power=power_norm, keep_duplicate_folds=keep_duplicate_folds, train_dataset=training,
                    drop_overlap=drop_overlap)
    ctx = Context.for_user(store)
    _check_backbone(unit, ctx)
    done = run_evaluation(unit, ctx)
    for note in done.inputs.notes:
        err_console.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    if as_json:
        print_json(summarise(done.results).to_dict(orient="records"))
    else:
        _print(done)  # before writing: a failing write still shows the scores
    tables = [(results, done.results, KEY)]
    if predictions is not None:
        tables.append((predictions, done.predictions, PREDICTION_KEY))
    upsert(*tables)  # together or not at all
    err_console.print(f"{len(done.results)} fold rows -> {results}"
                      + (f", predictions -> {predictions}" if predictions else ""), highlight=False)


def _check_backbone(unit: Evaluate, ctx: Context) -> None:
    """An unknown backbone (or member of a fusion A+B) is named as such (not as a missing feature set whose extract
    command would fail too), unless the store holds its features (a study's own backbone, say)."""
    from bench.evaluate.features import members
    from featurestore import FeatureStore

    store, installed = FeatureStore(ctx.store), ctx.registry.backbones()
    for name in members(unit.backbone):
        if name.partition("@")[0] in installed:
            continue
        if not any(i.dataset == unit.dataset.adapter and i.backbone == name for i in store.list()):
            raise BenchError(f"unknown backbone {name!r}: no installed plugin provides it and {store.path} holds no "
                             f"{unit.dataset.adapter} features of it; installed: {', '.join(installed)} (see "
                             "`bench backbones`)")


def _print(done: Evaluation) -> None:
    from protocols import stats
    from protocols.metrics import METRIC_TITLES, METRICS

    r = done.results
    title = (f"{r['dataset'].iloc[0]} · {r['protocol'].iloc[0]} · {r['backbone'].iloc[0]}"
             f"{' (fine-tuned)' if r['finetuned'].iloc[0] else ''} · split {r['split'].iloc[0]}")
    columns = ("fold", "train", "test", "C", *(METRIC_TITLES[m] for m in METRICS))
    shown = table(escape(title), columns, right=columns)
    for row in r.itertuples():
        shown.add_row(row.fold, str(row.n_train), str(row.n_test), f"{row.c:g}",
                      *(f"{100 * getattr(row, m):.1f}" for m in METRICS))
    means = [stats.mean_sd(r[m]) for m in METRICS]
    shown.add_row("mean", "", "", "", *(stats.format_mean_sd(m, s) for m, s in means), style="bold")
    console.print(shown)
    console.print(f"AUC {100 * means[0][0]:.1f}, 95% CI {100 * r['auc_ci_low'].iloc[0]:.1f}–"
                  f"{100 * r['auc_ci_high'].iloc[0]:.1f} (bootstrap over test lesions)")
    _print_difficulty(done)
    _print_referral(done)


def _print_difficulty(done: Evaluation) -> None:
    from protocols import stats

    manifest = done.inputs.manifest
    if "difficulty" not in manifest or manifest["difficulty"].isna().all():
        return
    by_level = stats.auc_by_difficulty(done.predictions, manifest.set_index("image_id")["difficulty"].astype(str))
    columns = ("difficulty", "AUC", "images", "folds")
    shown = table("AUC by diagnostic difficulty (paper's Table 4)", columns, right=columns)
    for row in by_level.itertuples():
        shown.add_row(row.difficulty, f"{100 * row.auc:.1f}", str(row.images), str(row.folds))
    console.print(shown)


def _print_referral(done: Evaluation) -> None:
    from protocols import stats

    design = done.inputs.design
    columns = ("cases referred", f"{design.classes[design.positive]} sensitivity")
    shown = table("Referral: refer confident positives and low-confidence cases (fold-averaged curve)", columns,
                  right=columns, caption="bold: the figure read off the curve for the other one")
    for row in stats.referral(done.predictions, done.inputs.design.positive).itertuples():
        referred, sensitivity = f"{100 * row.referred:.1f}%", f"{100 * row.sensitivity:.1f}%"
        shown.add_row(*((f"[bold]{referred}[/bold]", sensitivity) if row.target else (referred, f"[bold]{sensitivity}[/bold]")))
    console.print(shown)


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
            return _stored_predictions(predictions, unit.target, protocol, backbone, finetuned, split)
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


@app.command("select")
def select_command(
    candidates: Annotated[list[str], typer.Argument(help="Evaluated configurations, as the backbone column of "
                                                         "the results names them (options in brackets).")],
    protocol: Protocol,
    dataset: Dataset,
    finetuned: Finetuned = False,
    split: Split = "5x2",
    results: Results = DEFAULT_RESULTS,
    predictions: Annotated[Path, typer.Option(help="Per-image test scores written by `bench evaluate "
                                                   "--predictions`.")] = ...,
    as_json: JsonOption = False,
) -> None:
    """In each fold, the configuration with the highest validation AUC (chosen on the training part only), scored
    on that fold's test part; adds the selected pipeline's rows to the results and predictions tables."""
    from bench.evaluate.results import KEY, PREDICTION_KEY, check_writable, read_tables, upsert
    from bench.evaluate.select import command, select

    check_writable(results, predictions)
    line = command(candidates, dataset=dataset, protocol=protocol, split=split, finetuned=finetuned,
                   results=str(results), predictions=str(predictions))
    chosen = select(*read_tables(results, predictions), candidates, dataset=dataset, protocol=protocol,
                    split=split, finetuned=finetuned, command=line)
    r = chosen.results
    if as_json:
        print_json({"backbone": chosen.name, "auc": r["auc"].mean(), "ci_low": r["auc_ci_low"].iloc[0],
                    "ci_high": r["auc_ci_high"].iloc[0], "folds": chosen.choices.to_dict(orient="records")})
    else:
        shown = table(f"{dataset} · {protocol} · split {split}: chosen per fold by validation AUC",
                      ("fold", "chosen", "validation AUC", "test AUC"), right=("validation AUC", "test AUC"))
        for row in chosen.choices.itertuples():
            shown.add_row(row.fold, escape(row.chosen), f"{100 * row.validation_auc:.1f}", f"{100 * row.auc:.1f}")
        console.print(shown)
        console.print(f"{escape(chosen.name)}: AUC {100 * r['auc'].mean():.1f}, 95% CI {100 * r['auc_ci_low'].iloc[0]:.1f}–"
                      f"{100 * r['auc_ci_high'].iloc[0]:.1f} (bootstrap over test lesions)", highlight=False)
    upsert((results, r, KEY), (predictions, chosen.predictions, PREDICTION_KEY))
    err_console.print(f"{len(r)} fold rows -> {results}, predictions -> {predictions}", highlight=False)


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
                        split: str) -> pd.DataFrame:
    from bench.evaluate.results import matching, read_table

    rows = matching(read_table(path), dataset=dataset, protocol=protocol, backbone=backbone, finetuned=finetuned,
                  split=split)
    if rows.empty:
        raise BenchError(f"{path} has no predictions for {backbone} ({dataset}, {protocol}, split {split}"
                         f"{', fine-tuned' if finetuned else ''}): run `bench evaluate ... --predictions {path}`")
    return rows.dropna(axis=1, how="all")


@app.command()
def leaderboard(
    results: Annotated[Path, typer.Option(help="Results table written by `bench evaluate`.")] = DEFAULT_RESULTS,
    predictions: Annotated[Optional[Path], typer.Option(help="Per-image scores, for the ROC curves.")] = None,
    out: Annotated[Path, typer.Option(
        help="Markdown file to write; ROC PNGs go next to it.")] = DEFAULT_LEADERBOARD,
    note: Annotated[str, typer.Option(help="A paragraph printed under the title (e.g. where the data came from).")] = "",
) -> None:
    """Render the markdown leaderboard (and ROC curves) from the results table."""
    from bench.evaluate.leaderboard import render
    from bench.evaluate.results import read_tables

    table, scores = read_tables(results, predictions) if predictions is not None else (*read_tables(results), None)
    path = render(table, out, scores, note)
    console.print(f"leaderboard -> {path}")


@perf_app.command("evaluate")
def perf_evaluate(
    dataset: Dataset,
    backbone: Backbone,
    protocol: Protocol,
    root: RootOption = None,
    store: StoreOption = None,
    split: Split = "5x2",
    option: DatasetOptions = [],  # noqa: B006 (typer reads it)
) -> None:
    """Seconds for a whole evaluation (manifest, folds, features, SVM on every fold, bootstrap); writes nothing."""
    from bench.context import Context
    from bench.evaluate.score import prepare, run
    from bench.work import DatasetRef, Evaluate

    unit = Evaluate(backbone, DatasetRef.of(dataset, root, parse_pairs(option)), protocol, split)
    started, cpu = time.perf_counter(), time.process_time()
    inputs = prepare(unit, Context.for_user(store))
    prepared = time.perf_counter()
    done = run(inputs)
    finished = time.perf_counter()
    n = len(inputs.labels)
    console.print(f"{dataset} · {backbone} · {protocol} · {split}: {len(done.results)} folds over {n} images")
    console.print(f"manifest + folds {prepared - started:.1f} s, features + SVM + bootstrap "
                  f"{finished - prepared:.1f} s, whole evaluation {finished - started:.1f} s "
                  f"({time.process_time() - cpu:.1f} s of CPU over {os.cpu_count()} cores)")
