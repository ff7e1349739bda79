"""Training jobs, for `bench train` and a study's source and fine-tune stages: a backbone's source stage, or a
fine-tune on the training part of one target fold."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from torch import nn

from bench import paths, plugins
from bench.backbone import Backbone, SourceStage
from bench.dataset import fingerprint
from bench.errors import BenchError
from bench.overlap import TRAINED_ON, content
from bench.recipes import Recipe
from bench.train import LabelledImages, TrainingJob
from protocols.designs import DESIGNS, apply_design
from protocols.splits import fold_record, groups_of, make_folds, select_folds


def source_stage_job(backbone: Backbone, dataset: str, root: Path | None, recipe: Recipe, *,
                     options: dict[str, str] | None = None, limit: int | None = None, seed: int = 0) -> TrainingJob:
    """Train `backbone`'s source stage on `dataset` (e.g. retino: VGG-M from scratch on the retinopathy grades);
    the result, in `weights_dir()/stage.output`, becomes the backbone's initial weights."""
    stage = _stage(backbone, dataset)
    manifest = plugins.get_dataset(dataset).manifest(root, **(options or {}))
    rows = manifest.head(limit) if limit else manifest
    # the source task's own label (e.g. the retinopathy grade) where the adapter keeps one
    own = "source_label" in rows and rows["source_label"].notna().all()
    values = rows["source_label"] if own else rows["diagnosis"]
    classes, labels = np.unique(values.astype(str), return_inverse=True)
    start = plugins.get_backbone(stage.start)
    # what it trains on goes with the weights, by content, so that no copy of those pictures is ever scored with it
    meta = {"stage": f"{stage.task} on {stage.dataset} (from {stage.start})", "dataset": dataset,
            "dataset_fingerprint": fingerprint(manifest), "limit": limit,
            TRAINED_ON: content(rows).to_dict(orient="list")}
    return _job(backbone, start.create, _labelled(rows, labels, tuple(classes)),
                recipe.starting_from(start.random_init), out=paths.weights_dir() / stage.output,
                key=Path(stage.output).stem, seed=seed, meta=meta)


def finetune_job(backbone: Backbone, dataset: str, root: Path | None, recipe: Recipe, *, protocol: str, fold: str,
                 split: str = "5x2", reference_dir: Path | None = None, options: dict[str, str] | None = None,
                 limit: int | None = None, seed: int = 0) -> TrainingJob:
    """Fine-tune `backbone` on the training part of `fold` only, with `protocol`'s classes. The folds are made on
    the full manifest (as evaluation makes them) and the fold's test images are never read."""
    manifest = plugins.get_dataset(dataset).manifest(root, **(options or {}))
    folds = make_folds(manifest, split, seed=seed, reference_dir=reference_dir, protocol=protocol)
    train_ids, _ = select_folds(folds, [fold], split)[fold]
    design = apply_design(manifest, protocol)
    rows = design[design["image_id"].isin(set(train_ids))]
    rows = rows.head(limit) if limit else rows
    classes = DESIGNS[protocol].classes
    missing = [c for i, c in enumerate(classes) if not (rows["label"] == i).any()]
    if missing:
        raise BenchError(f"fold {fold} has no training images of class(es) {missing} under {protocol}"
                         + (f" in its first {limit} rows: raise --limit" if limit else ""))
    meta = {"dataset": dataset, "dataset_fingerprint": fingerprint(manifest), "protocol": protocol, "split": split,
            "fold": fold, "limit": limit,
            "fold_record": fold_record(protocol, split, seed, fold, rows["image_id"].tolist())}
    return _job(backbone, backbone.create, _labelled(rows, rows["label"].to_numpy(), classes),
                recipe.starting_from(backbone.random_init),
                out=paths.finetuned_checkpoint(dataset, backbone.name, protocol, fold),
                key=paths.feature_key(protocol, fold), seed=seed, meta=meta)


def _stage(backbone: Backbone, dataset: str) -> SourceStage:
    for stage in backbone.source_stages:
        if stage.dataset == dataset:
            return stage
    if backbone.source_stages:
        names = ", ".join(s.dataset for s in backbone.source_stages)
        raise BenchError(f"{backbone.name}'s source stage trains on {names}, not {dataset}; to fine-tune on "
                         f"{dataset} give --protocol P --fold K")
    raise BenchError(f"{backbone.name} has no source stage; to fine-tune it on {dataset} give --protocol P --fold K")


def _labelled(rows: pd.DataFrame, labels: np.ndarray, classes: tuple[str, ...]) -> LabelledImages:
    return LabelledImages(image_ids=rows["image_id"].astype(str).to_numpy(), paths=rows["path"].astype(str).tolist(),
                          labels=np.asarray(labels, np.int64), classes=classes, groups=groups_of(rows).to_numpy())


def _job(backbone: Backbone, start: Callable[[], nn.Module], data: LabelledImages, recipe: Recipe, *, out: Path,
         key: str, seed: int, meta: dict) -> TrainingJob:
    """The job, with a run folder named after everything that determines its result, so rerunning the same
    command resumes it and a changed command starts afresh."""
    config = {"backbone": backbone.name, "recipe": recipe.to_dict(), "seed": seed, **meta}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    return TrainingJob(backbone=backbone.name, start=start, feature_dim=backbone.feature_dim, data=data,
                       recipe=recipe, preprocessing=backbone.preprocessing.with_size(recipe.image_size), out=out,
                       run_dir=paths.home() / "runs" / meta["dataset"] / backbone.name / f"{key}-{digest}",
                       seed=seed, meta=meta)
