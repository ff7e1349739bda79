"""`bench reproduce`: a whole study, planned (`bench.study.plan`) and run (`bench.study.runner`) in its own folder
(`bench.study.workspace`), locally or on Ray (`bench.study.executors`). This module names the function of each kind of unit
(`bench.work`), says how the study knows a unit's output is still there, and keeps the results tables."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from rich.console import Console

from bench.context import Context
from bench.study.executors import InProcess, RayStages
from bench.study.plan import StudyData, candidates, changed_since, plan
from bench.study.runner import Action, Ledger, execute
from bench.study.schema import Study
from bench.work import EXTERNAL, Evaluate, Extract, ExtractTrunk, Report, Work
from bench.study.workspace import Workspace

if TYPE_CHECKING:
    from bench.extract.pipeline import Extraction


def reproduce(study: Study, out: Path, console: Console, executor: str = "local",
              address: str | None = None) -> Counter:
    """Run every unit of `study` not already done in `out` (the report: `Workspace(out).report`); returns how
    many ran and how many were skipped. `executor` "ray" runs the units as Ray tasks on the cluster at `address`
    (default: $RAY_ADDRESS, else a Ray instance started here)."""
    ws = Workspace(Path(out).resolve())
    ws.out.mkdir(parents=True, exist_ok=True)
    ctx = ws.context(study)
    data = StudyData.load(study, ctx)
    ledger = Ledger(ws.ledger)
    units = _flagged(study, plan(study, data.fold_keys, ctx), ledger)
    runner = RayStages(ctx, address) if executor == "ray" else InProcess(ctx)
    counts = execute(units, ledger, actions(study, ws, data, ctx), data.identity, ws.log, console, runner)
    console.print(f"{counts['ran']} stage(s) run, {counts['skipped']} unchanged and skipped", highlight=False)
    return counts


def _flagged(study: Study, units: list[Work], ledger: Ledger) -> list[Work]:
    """The units, the report naming the candidates added or changed since confirmation started; the first run
    that plans confirmation records the candidate list in the ledger, before any confirmation result exists."""
    if study.confirm is None:
        return units
    now = candidates(study, units)
    flagged = tuple(sorted(changed_since(ledger.start_confirmation(now), now).items()))
    return [replace(u, flagged=flagged) if isinstance(u, Report) else u for u in units]


def actions(study: Study, ws: Workspace, data: StudyData, ctx: Context) -> dict[str, Action]:
    """Each kind's function, how the study knows its output is still there, and what it keeps of it."""
    from bench.study import report
    from bench.evaluate.score import evaluate
    from bench.train.jobs import finetune, train_source
    from bench.train.trunk import set_key

    store = _StoreSnapshot(ws.store)
    return {
        "source": Action(train_source, present=lambda s: s.output(ctx).is_file()),
        "trunk": Action(_trunk, present=lambda s: store.has(s.dataset.adapter, s.backbone, set_key(s, ctx))),
        "finetune": Action(finetune, present=lambda s: s.checkpoint(ctx).is_file()),
        "extract": Action(_extract, present=lambda s: store.has(s.dataset.adapter, s.backbone, s.set_key)),
        "evaluate": Action(evaluate, present=lambda s: _has_results(ws, s),
                           keep=lambda s, done: _keep_evaluation(ws, done)),
        "report": Action(lambda s, ctx: report.write(study, ws, data, dict(s.flagged)),
                         present=lambda s: ws.report.is_file()),
    }


def _extract(unit: Extract, ctx: Context) -> str:
    from bench.extract.pipeline import prepare

    if not unit.from_trunk:
        return _fill(prepare, unit, ctx)
    from bench.train.top import features_from_trunk

    job = _prepared(prepare, unit, ctx)
    try:
        features_from_trunk(job, ctx, unit.protocol, unit.fold)
    finally:
        job.writer.release()
    return job.model.sha256


def _trunk(unit: ExtractTrunk, ctx: Context) -> str:
    from bench.train.trunk import prepare

    return _fill(prepare, unit, ctx)


def _fill(prepare: Callable[[Any, Context], Extraction], unit: Extract | ExtractTrunk, ctx: Context) -> str:
    """Fill the set `prepare` makes of `unit`, showing how it goes; the digest of the model that filled it."""
    from bench.progress import progress

    job = _prepared(prepare, unit, ctx)
    with progress(f"{unit.dataset.adapter}/{unit.backbone}/{job.key}", job.todo_images) as shown:
        return job.fill(shown.advance)


def _prepared(prepare: Callable[[Any, Context], Extraction], unit: Extract | ExtractTrunk,
              ctx: Context) -> Extraction:
    from featurestore import StoreError

    try:  # a set this study began with the same model resumes where it stopped
        return prepare(unit, ctx)
    except StoreError:  # one the study made from an earlier model (a changed setting upstream) is replaced
        return prepare(replace(unit, overwrite=True), ctx)


class _StoreSnapshot:
    """Which complete feature sets the store held when the run began (listing it once keeps a rerun instant)."""

    def __init__(self, store: Path):
        self.store = store
        self.sets: set[tuple[str, str, str]] | None = None

    def has(self, dataset: str, backbone: str, key: str) -> bool:
        from featurestore import FeatureStore

        if self.sets is None:
            self.sets = {(i.dataset, i.backbone, i.key) for i in FeatureStore(self.store).list() if i.complete}
        return (dataset, backbone, key) in self.sets


def _has_results(ws: Workspace, unit: Evaluate) -> bool:
    from bench.evaluate.results import matching, read_table

    if not (ws.results.is_file() and ws.predictions.is_file()):
        return False
    rows = matching(read_table(ws.results), dataset=unit.target, protocol=unit.protocol,
                    backbone=unit.features, finetuned=unit.finetuned, split=unit.split, seed=unit.seed)
    return set(rows["fold"]) == (set(unit.folds) if unit.split != EXTERNAL else {"all"})


def _keep_evaluation(ws: Workspace, done: Any) -> str:
    """The evaluation's rows into the study's results and predictions tables; the digest of its metrics."""
    from bench.evaluate.results import EVALUATION, upsert

    # keyed by the evaluation, not the fold: a study run on fewer folds than before leaves no stale fold rows
    upsert((ws.results, done.results, EVALUATION), (ws.predictions, done.predictions, EVALUATION))
    metrics = done.results[["fold", "auc", "map", "acc", "se", "sp", "c"]].to_csv(index=False)
    return hashlib.sha256(metrics.encode()).hexdigest()
