"""Training, for `bench train` and a study's source and fine-tune stages: a backbone's source stage, or a
fine-tune on the training part of one target fold. `*_job` builds the job (nothing trained yet); `train_source`
and `finetune` run it."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from torch import nn

from bench.backbone import Backbone
from bench.context import Context
from bench.dataset import fingerprint
from bench.errors import BenchError
from bench.paths import backbone_part
from bench.overlap import TRAINED_ON, content
from bench.train.recipes import Recipe
from bench.train.loop import LabelledImages, TrainingJob
from bench.train.top import fit
from bench.work import FineTune, TrainSource, weights_file
from featurestore.keys import feature_key
from protocols.designs import DESIGNS, apply_design
from protocols.splits import fold_record, groups_of, make_folds, select_folds


def train_source(unit: TrainSource, ctx: Context) -> str:
    """Train the source stage (from the trunk set of `bench.work.trunk_pass(unit)` if its recipe has a view
    pool); the digest of the weights it made."""
    return _fit(source_stage_job(unit, ctx))


def finetune(unit: FineTune, ctx: Context) -> str:
    """Fine-tune (from the trunk set of `bench.work.trunk_pass(unit)` if its recipe has a view pool); the digest
    of the checkpoint it made."""
    return _fit(finetune_job(unit, ctx))


def _fit(job: TrainingJob) -> str:
    from bench.digests import file_digest

    fit(job)
    return file_digest(job.out)


def source_stage_job(unit: TrainSource, ctx: Context) -> TrainingJob:
    """Train a backbone's source stage (e.g. retino: VGG-M from scratch on the retinopathy grades); the result, in
    `unit.output(ctx)`, becomes the backbone's initial weights."""
    backbone, start = ctx.registry.backbone(unit.backbone), ctx.registry.backbone(unit.start)
    weights = weights_file(unit.weights) or ctx.source_weights(start)  # a missing file fails before any work
    manifest = unit.dataset.manifest(ctx)
    limit = unit.dataset.limit
    rows = manifest.head(limit) if limit else manifest
    # the source task's own label (e.g. the retinopathy grade) where the adapter keeps one
    own = "source_label" in rows and rows["source_label"].notna().all()
    values = rows["source_label"] if own else rows["diagnosis"]
    classes, labels = np.unique(values.astype(str), return_inverse=True)
    # what it trains on goes with the weights, by content, so that no copy of those pictures is ever scored with it
    meta = {"stage": f"{backbone.source_stages[0].task} on {unit.dataset.adapter} (from {unit.start})",
            "dataset": unit.dataset.adapter, "dataset_fingerprint": fingerprint(manifest), "limit": limit,
            TRAINED_ON: content(rows).to_dict(orient="list"), **_start_weights(unit.weights)}
    out = unit.output(ctx)
    return _job(ctx, backbone, functools.partial(start.create, weights),
                _labelled(rows, labels, tuple(classes)), unit.recipe.starting_from(start.random_init), out=out,
                key=out.stem, seed=unit.seed, meta=meta, trunk_of=start)


def finetune_job(unit: FineTune, ctx: Context) -> TrainingJob:
    """Fine-tune a backbone on the training part of `unit.fold` only, with its protocol's classes (with the recipe's
    `target = "diagnosis"`: its images' diagnoses). The folds are made on the full manifest (as evaluation makes
    them) and the fold's test images are never read."""
    backbone = ctx.registry.backbone(unit.backbone)
    weights = weights_file(unit.weights) or ctx.source_weights(backbone)  # a missing file fails before any work
    manifest = unit.dataset.manifest(ctx)
    protocol, fold, split, limit = unit.protocol, unit.fold, unit.split, unit.limit
    folds = make_folds(manifest, split, seed=unit.seed, reference_dir=unit.reference, protocol=protocol)
    train_ids, _ = select_folds(folds, [fold], split)[fold]
    design = apply_design(manifest, protocol)
    rows = design[design["image_id"].isin(set(train_ids))]
    rows = rows.head(limit) if limit else rows
    classes = DESIGNS[protocol].classes
    missing = [c for i, c in enumerate(classes) if not (rows["label"] == i).any()]
    if missing:
        raise BenchError(f"fold {fold} has no training images of class(es) {missing} under {protocol}"
                         + (f" in its first {limit} rows: raise --limit" if limit else ""))
    meta = {"dataset": unit.dataset.adapter, "dataset_fingerprint": fingerprint(manifest), "protocol": protocol,
            "split": split, "fold": fold, "limit": limit,
            "fold_record": fold_record(protocol, split, unit.seed, fold, rows["image_id"].tolist()),
            **_start_weights(unit.weights)}
    labels = rows["label"].to_numpy()
    if unit.recipe.target == "diagnosis":  # the same images, told apart by diagnosis
        found, labels = np.unique(rows["diagnosis"].astype(str), return_inverse=True)
        classes = tuple(found)
    return _job(ctx, backbone, functools.partial(backbone.create, weights),
                _labelled(rows, labels, classes), unit.recipe.starting_from(backbone.random_init),
                out=unit.checkpoint(ctx), key=feature_key(protocol, fold), seed=unit.seed, meta=meta,
                trunk_of=backbone)


def _start_weights(weights: Path | None) -> dict:
    """The digest of the file a job starts from where it was given (a run from other weights is another run);
    nothing otherwise, so the runs and checkpoints made before --weights keep their keys."""
    from bench.digests import file_digest

    return {"start_weights": file_digest(weights)} if weights else {}


def _labelled(rows: pd.DataFrame, labels: np.ndarray, classes: tuple[str, ...]) -> LabelledImages:
    return LabelledImages(image_ids=rows["image_id"].astype(str).to_numpy(), paths=rows["path"].astype(str).tolist(),
                          labels=np.asarray(labels, np.int64), classes=classes, groups=groups_of(rows).to_numpy())


def _job(ctx: Context, backbone: Backbone, start: Callable[[], nn.Module], data: LabelledImages, recipe: Recipe, *,
         out: Path, key: str, seed: int, meta: dict, trunk_of: Backbone) -> TrainingJob:
    """The job, with a run folder named after everything that determines its result, so rerunning the same
    command resumes it and a changed command starts afresh. A recipe with a view pool trains from `trunk_of`'s
    trunk set in the context's store (the one `bench.work.trunk_pass` names)."""
    config = {"backbone": backbone.name, "recipe": recipe.to_dict(), "seed": seed, **meta}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    return TrainingJob(backbone=backbone.name, start=start, feature_dim=backbone.feature_dim, data=data,
                       recipe=recipe, preprocessing=backbone.preprocessing.with_size(recipe.image_size), out=out,
                       run_dir=ctx.home / "runs" / meta["dataset"] / backbone_part(backbone.name) / f"{key}-{digest}",
                       seed=seed, meta=meta, store=ctx.store, trunk_of=trunk_of)
