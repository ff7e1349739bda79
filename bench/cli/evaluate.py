"""`bench evaluate`: score a feature set with the paper's protocol on every fold, print and keep the rows.

The evaluation and its statistics are imported when the command runs: `bench --help` does not pay for them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.markup import escape

from bench.cli.app import app
from bench.cli.options import (Backbone, Dataset, DatasetOptions, DropOverlap, EvaluateSplit, Finetuned, Folds,
                               JsonOption, KeepDuplicates, PowerNorm, Predictions, Protocol, ReferenceDir, Results,
                               RootOption, ScoredTTA, Seed, StoreOption, TrainDataset, TrainOptions, TrainRoot,
                               parse_pairs)
from bench.cli.output import console, err_console, print_json, table
from bench.errors import BenchError
from bench.paths import DEFAULT_RESULTS

if TYPE_CHECKING:
    from bench.context import Context
    from bench.evaluate.score import Evaluation
    from bench.work import Evaluate


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
    tta: ScoredTTA = None,
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
