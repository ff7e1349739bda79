"""`bench reproduce`: a whole study, planned (`bench.plan`) and run (`bench.runner`) in its own folder
(`bench.workspace`), locally or on Ray (`bench.executors`). This module says what each kind of stage does, with
the training, extraction and evaluation of the other parts of bench."""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console

from bench import paths, plugins
from bench.executors import InProcess, RayStages
from bench.plan import Evaluate, Extract, FineTune, StudyData, TrainSource, plan
from bench.runner import Action, Ledger, execute
from bench.study import Study
from bench.workspace import Workspace, share_caches, worker_env


def reproduce(study: Study, out: Path, console: Console, executor: str = "local",
              address: str | None = None) -> Counter:
    """Run every stage of `study` not already done in `out` (the report: `Workspace(out).report`); returns how
    many stages ran and how many were skipped. `executor` "ray" runs the stages as Ray tasks on the cluster at
    `address` (default: $RAY_ADDRESS, else a Ray instance started here)."""
    ws = Workspace(Path(out).resolve())
    ws.out.mkdir(parents=True, exist_ok=True)
    user_home = paths.home()
    with worker_env(ws.home, study):
        share_caches(user_home, ws.home, study)
        data = StudyData.load(study)
        stages = plan(study, data.fold_keys)
        runner = RayStages(ws.home, study, address) if executor == "ray" else InProcess()
        counts = execute(stages, Ledger(ws.ledger), actions(study, ws, data), data.identity, ws.log, console,
                         runner)
    console.print(f"{counts['ran']} stage(s) run, {counts['skipped']} unchanged and skipped", highlight=False)
    return counts


def actions(study: Study, ws: Workspace, data: StudyData) -> dict[str, Action]:
    """The real stage functions: training, extraction and evaluation of the other parts of bench."""
    from bench import report

    return {
        "source": Action(run=lambda s: _train_source(study, s), present=lambda s: _source_file(s).is_file()),
        "finetune": Action(run=lambda s: _finetune(study, s), present=lambda s: _checkpoint(s).is_file()),
        "extract": Action(run=lambda s: _extract(study, ws, s), present=_StoreSnapshot(ws.store).has),
        "evaluate": Action(run=lambda s: _evaluate(study, ws, s), present=lambda s: _has_results(ws, s),
                           keep=lambda s, done: _keep_evaluation(ws, done)),
        "report": Action(run=lambda s: report.write(study, ws, data), present=lambda s: ws.report.is_file()),
    }


def _source_file(stage: TrainSource) -> Path:
    return paths.weights_dir() / plugins.get_backbone(stage.backbone).source_stages[0].output


def _train_source(study: Study, stage: TrainSource) -> str:
    from bench.digests import file_digest
    from bench.jobs import source_stage_job
    from bench.train import fit

    spec = study.datasets[stage.dataset.name]
    backbone = plugins.get_backbone(stage.backbone)
    # the backbone's own stage (start, output), run on the study's dataset: e.g. retino on synthetic-fundus
    trained = dataclasses.replace(backbone, source_stages=(
        dataclasses.replace(backbone.source_stages[0], dataset=spec.adapter),))
    job = source_stage_job(trained, spec.adapter, spec.root, stage.recipe, options=spec.options,
                           limit=spec.limit, seed=study.seed)
    fit(job)
    return file_digest(job.out)


def _checkpoint(stage: FineTune) -> Path:
    return paths.finetuned_checkpoint(stage.dataset.adapter, stage.backbone, stage.protocol, stage.fold)


def _finetune(study: Study, stage: FineTune) -> str:
    from bench.digests import file_digest
    from bench.jobs import finetune_job
    from bench.train import fit

    spec = study.datasets[stage.dataset.name]
    job = finetune_job(plugins.get_backbone(stage.backbone), spec.adapter, spec.root, stage.recipe,
                       protocol=stage.protocol, fold=stage.fold, split=stage.split, reference_dir=stage.reference,
                       options=spec.options, seed=study.seed)
    fit(job)
    return file_digest(job.out)


def _extract(study: Study, ws: Workspace, stage: Extract) -> str:
    from bench.extract import prepare
    from bench.progress import progress
    from featurestore import StoreError

    spec = study.datasets[stage.dataset.name]
    arguments = dict(store=ws.store, protocol=stage.protocol, fold=stage.fold, options=spec.options, tta=stage.tta)
    try:  # a set this study began with the same model resumes where it stopped
        job = prepare(stage.backbone, spec.adapter, spec.root, **arguments)
    except StoreError:  # one the study made from an earlier model (a changed setting upstream) is replaced
        job = prepare(stage.backbone, spec.adapter, spec.root, overwrite=True, **arguments)
    try:
        with progress(f"{spec.adapter}/{stage.backbone}/{job.key}", job.todo_images) as shown:
            job.run(shown.advance)
    finally:
        job.writer.release()  # a Ray worker outlives the stage: its lease must not
    return job.model.sha256


class _StoreSnapshot:
    """Which complete feature sets the store held when the run began (listing it once keeps a rerun instant)."""

    def __init__(self, store: Path):
        self.store = store
        self.sets: set[tuple[str, str, str]] | None = None

    def has(self, stage: Extract) -> bool:
        from featurestore import FeatureStore

        if self.sets is None:
            self.sets = {(i.dataset, i.backbone, i.key) for i in FeatureStore(self.store).list() if i.complete}
        return (stage.dataset.adapter, stage.backbone, stage.set_key) in self.sets


def _has_results(ws: Workspace, stage: Evaluate) -> bool:
    from bench.results import read_table, select

    if not (ws.results.is_file() and ws.predictions.is_file()):
        return False
    rows = select(read_table(ws.results), dataset=stage.dataset.adapter, protocol=stage.protocol,
                  backbone=stage.label, finetuned=stage.finetuned, split=stage.split)
    return set(rows["fold"]) == set(stage.folds)


def _evaluate(study: Study, ws: Workspace, stage: Evaluate) -> Any:
    from bench.evaluate import Request, prepare, run

    spec = study.datasets[stage.dataset.name]
    request = Request(dataset=spec.adapter, backbone=stage.backbone, protocol=stage.protocol, split=stage.split,
                      finetuned=stage.finetuned, seed=study.seed, root=spec.root, store=ws.store,
                      reference_dir=stage.reference, options=tuple(sorted(spec.options.items())),
                      folds=stage.folds, tta=stage.tta, power=stage.power)
    return run(prepare(request))


def _keep_evaluation(ws: Workspace, done: Any) -> str:
    """The evaluation's rows into the study's results and predictions tables; the digest of its metrics."""
    from bench.results import EVALUATION, upsert

    # keyed by the evaluation, not the fold: a study run on fewer folds than before leaves no stale fold rows
    upsert((ws.results, done.results, EVALUATION), (ws.predictions, done.predictions, EVALUATION))
    metrics = done.results[["fold", "auc", "map", "acc", "se", "sp", "c"]].to_csv(index=False)
    return hashlib.sha256(metrics.encode()).hexdigest()
