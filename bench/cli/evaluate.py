"""`bench evaluate`, `bench compare`, `bench leaderboard` and `bench perf evaluate`."""

import os
import time
from pathlib import Path
from typing import Annotated, Optional

import pandas as pd
import typer
from rich.table import Table

from bench.cli.app import app, console, err_console, perf_app
from bench.cli.catalogue import DatasetOptions, RootOption, parse_options
from bench.errors import BenchError
from bench.evaluate import Evaluation, Request, evaluate as run_evaluation, prepare, run
from bench.leaderboard import DEFAULT_OUT, DEFAULT_RESULTS, EVALUATION, KEY, read_table, render, upsert
from protocols import stats
from protocols.metrics import METRICS
from protocols.splits import SPLITS

Protocol = Annotated[str, typer.Option(help="Label design: mal-vs-ben, mela-vs-ben or mela-vs-carc-vs-ben.")]
Dataset = Annotated[str, typer.Option(help="Dataset adapter (see `bench datasets`).")]
Backbone = Annotated[str, typer.Option(help="Backbone whose features are scored (see `bench backbones`); A+B scores "
                                             "the concatenation of A's and B's L2-normalised sets.")]
TTA = Annotated[Optional[str], typer.Option("--tta", help="Score the sets extracted with `bench extract --tta` "
                                                          "(dihedral).")]
PowerNorm = Annotated[bool, typer.Option("--power-norm", help="Signed square root of every feature before L2 "
                                                              "normalisation (recorded in the results).")]
Finetuned = Annotated[bool, typer.Option("--finetuned", help="Use each fold's fine-tuned set ft-<protocol>-<fold>.")]
Split = Annotated[str, typer.Option(help=f"How folds are made: {', '.join(SPLITS)}.")]
ReferenceDir = Annotated[Optional[Path], typer.Option(help="The paper's fold files (a folder or one .yml file).")]
KeepDuplicates = Annotated[bool, typer.Option("--keep-duplicate-folds",
                                              help="Reference split: also run the repeated partitions.")]
Folds = Annotated[list[str], typer.Option(
    "--fold", help="Only this fold (repeatable), e.g. r0f0 where only it was fine-tuned; default: every fold.")]
Seed = Annotated[int, typer.Option(help="Seeds the 5x2 folds, the validation split and the bootstrap.")]
Store = Annotated[Optional[Path], typer.Option(help="Feature store (default: $BENCH_STORE or ./bench-store).")]
Results = Annotated[Path, typer.Option(help="Results table: one row per fold, replaced by key.")]
Predictions = Annotated[Optional[Path], typer.Option(help="Per-image test scores (CSV, .csv.gz to compress).")]


@app.command()
def evaluate(
    protocol: Protocol,
    dataset: Dataset,
    backbone: Backbone,
    finetuned: Finetuned = False,
    split: Split = "5x2",
    reference_dir: ReferenceDir = None,
    keep_duplicate_folds: KeepDuplicates = False,
    seed: Seed = 0,
    store: Store = None,
    root: RootOption = None,
    option: DatasetOptions = [],  # noqa: B006 (typer reads it)
    results: Results = DEFAULT_RESULTS,
    predictions: Predictions = None,
    fold: Folds = [],  # noqa: B006 (typer reads it)
    tta: TTA = None,
    power_norm: PowerNorm = False,
) -> None:
    """Score a feature set with the paper's linear-SVM protocol on every fold; write results (and predictions)."""
    request = Request(dataset, backbone, protocol, split, finetuned, seed, root, store, reference_dir,
                      keep_duplicate_folds, tuple(parse_options(option).items()), tuple(fold), tta, power_norm)
    done = run_evaluation(request)
    upsert(results, done.results, KEY)
    if predictions is not None:
        upsert(predictions, done.predictions, KEY + ["image_id"])
    _print(done)
    console.print(f"{len(done.results)} fold rows -> {results}" + (f", predictions -> {predictions}" if predictions else ""))


def _print(done: Evaluation) -> None:
    for note in done.inputs.notes:
        err_console.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    r = done.results
    title = (f"{r['dataset'].iloc[0]} · {r['protocol'].iloc[0]} · {r['backbone'].iloc[0]}"
             f"{' (fine-tuned)' if r['finetuned'].iloc[0] else ''} · split {r['split'].iloc[0]}")
    table = Table(title=title)
    for column in ("fold", "train", "test", "C", *(m.upper() if m != "map" else "mAP" for m in METRICS)):
        table.add_column(column, justify="right")
    for row in r.itertuples():
        table.add_row(row.fold, str(row.n_train), str(row.n_test), f"{row.c:g}",
                      *(f"{100 * getattr(row, m):.1f}" for m in METRICS))
    means = [stats.mean_sd(r[m]) for m in METRICS]
    table.add_row("mean", "", "", "", *(stats.format_mean_sd(m, s) for m, s in means), style="bold")
    console.print(table)
    console.print(f"AUC {100 * means[0][0]:.1f}, 95% CI {100 * r['auc_ci_low'].iloc[0]:.1f}–"
                  f"{100 * r['auc_ci_high'].iloc[0]:.1f} (bootstrap over test images)")
    _print_difficulty(done)
    _print_referral(done)


def _print_difficulty(done: Evaluation) -> None:
    manifest = done.inputs.manifest
    if "difficulty" not in manifest or manifest["difficulty"].isna().all():
        return
    by_level = stats.auc_by_difficulty(done.predictions, manifest.set_index("image_id")["difficulty"].astype(str))
    table = Table(title="AUC by diagnostic difficulty (paper's Table 4)")
    for column in ("difficulty", "AUC", "images", "folds"):
        table.add_column(column, justify="right")
    for row in by_level.itertuples():
        table.add_row(row.difficulty, f"{100 * row.auc:.1f}", str(row.images), str(row.folds))
    console.print(table)


def _print_referral(done: Evaluation) -> None:
    table = Table(title="Referral: refer confident positives and low-confidence cases (fold-averaged curve)",
                  caption="bold: the figure read off the curve for the other one")
    table.add_column("cases referred", justify="right")
    table.add_column("melanoma sensitivity", justify="right")
    for row in stats.referral(done.predictions, done.inputs.design.positive).itertuples():
        referred, sensitivity = f"{100 * row.referred:.1f}%", f"{100 * row.sensitivity:.1f}%"
        table.add_row(*((f"[bold]{referred}[/bold]", sensitivity) if row.target else (referred, f"[bold]{sensitivity}[/bold]")))
    console.print(table)


@app.command()
def compare(
    a: Annotated[str, typer.Argument(help="First backbone.")],
    b: Annotated[str, typer.Argument(help="Second backbone.")],
    protocol: Protocol,
    dataset: Dataset,
    finetuned: Finetuned = False,
    split: Split = "5x2",
    reference_dir: ReferenceDir = None,
    seed: Seed = 0,
    store: Store = None,
    root: RootOption = None,
    option: DatasetOptions = [],  # noqa: B006 (typer reads it)
    predictions: Annotated[Optional[Path], typer.Option(
        help="Read both backbones' test scores from this file instead of recomputing them.")] = None,
) -> None:
    """Paired bootstrap test of two backbones' mean AUC on the same folds and test images."""
    def scores(backbone: str) -> pd.DataFrame:
        if predictions is not None:
            return _stored_predictions(predictions, dataset, protocol, backbone, finetuned, split)
        request = Request(dataset, backbone, protocol, split, finetuned, seed, root, store, reference_dir,
                          options=tuple(parse_options(option).items()))
        return run_evaluation(request).predictions

    result = stats.paired_comparison(scores(a), scores(b), seed=seed)
    d = result.difference
    console.print(f"{dataset} · {protocol} · split {split}{' · fine-tuned' if finetuned else ''}: "
                  f"AUC({a}) - AUC({b}) = {100 * d.estimate:+.1f} points, 95% CI {100 * d.low:+.1f} to "
                  f"{100 * d.high:+.1f}, two-sided p = {result.p_value:.3g} (paired bootstrap over test images, "
                  f"{result.folds} folds)")


def _stored_predictions(path: Path, dataset: str, protocol: str, backbone: str, finetuned: bool,
                        split: str) -> pd.DataFrame:
    table = read_table(path)
    wanted = dict(zip(EVALUATION, (dataset, protocol, backbone, finetuned, split)))
    rows = table[(table[list(wanted)] == pd.Series(wanted)).all(axis=1)]
    if rows.empty:
        raise BenchError(f"{path} has no predictions for {backbone} ({dataset}, {protocol}, split {split}"
                         f"{', fine-tuned' if finetuned else ''}): run `bench evaluate ... --predictions {path}`")
    return rows.dropna(axis=1, how="all")


@app.command()
def leaderboard(
    results: Annotated[Path, typer.Option(help="Results table written by `bench evaluate`.")] = DEFAULT_RESULTS,
    predictions: Annotated[Optional[Path], typer.Option(help="Per-image scores, for the ROC curves.")] = None,
    out: Annotated[Path, typer.Option(help="Markdown file to write; ROC PNGs go next to it.")] = DEFAULT_OUT,
    note: Annotated[str, typer.Option(help="A paragraph printed under the title (e.g. where the data came from).")] = "",
) -> None:
    """Render the markdown leaderboard (and ROC curves) from the results table."""
    scores = read_table(predictions) if predictions is not None else None
    path = render(read_table(results), out, scores, note)
    console.print(f"leaderboard -> {path}")


@perf_app.command("evaluate")
def perf_evaluate(
    dataset: Dataset,
    backbone: Backbone,
    protocol: Protocol,
    root: RootOption = None,
    store: Store = None,
    split: Split = "5x2",
    option: DatasetOptions = [],  # noqa: B006 (typer reads it)
) -> None:
    """Seconds for a whole evaluation (manifest, folds, features, SVM on every fold, bootstrap); writes nothing."""
    request = Request(dataset, backbone, protocol, split, root=root, store=store,
                      options=tuple(parse_options(option).items()))
    started, cpu = time.perf_counter(), time.process_time()
    inputs = prepare(request)
    prepared = time.perf_counter()
    done = run(inputs)
    finished = time.perf_counter()
    n = len(inputs.labels)
    console.print(f"{dataset} · {backbone} · {protocol} · {split}: {len(done.results)} folds over {n} images")
    console.print(f"manifest + folds {prepared - started:.1f} s, features + SVM + bootstrap "
                  f"{finished - prepared:.1f} s, whole evaluation {finished - started:.1f} s "
                  f"({time.process_time() - cpu:.1f} s of CPU over {os.cpu_count()} cores)")
