"""Score a feature set under a protocol: manifest -> folds (on the full manifest) -> design -> SVM per fold.

The result is a per-fold table (the rows of `leaderboard/results.csv`) and a per-image table of test scores (what
the statistics, `bench compare` and the ROC curves are computed from).
"""

from __future__ import annotations

import shlex
import warnings
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

import bench
from bench import paths, plugins
from bench.dataset import fingerprint, image_digests, label_fingerprint
from bench.errors import BenchError
from bench.features import DROPPED, label as features_label, reader as features_reader
from bench.results import KEY
from featurestore import FeatureSet, FeatureStore
from protocols.designs import Design, apply_design, get_design
from protocols.metrics import fold_metrics, positive_scores, predicted_class
from protocols.splits import fold_record_problems, groups_of, lesion_note, make_folds, select_folds
from protocols.stats import bootstrap_auc
from protocols.svm import Fold, run_folds



@dataclass(frozen=True)
class Request:
    """Everything that decides an evaluation's numbers (and so goes into its regenerating command)."""

    dataset: str
    backbone: str
    protocol: str
    split: str = "5x2"
    finetuned: bool = False
    seed: int = 0
    root: Path | None = None
    store: str | None = None  # a folder or an fsspec URL (a Path would turn s3://b into s3:/b)
    reference_dir: Path | None = None
    keep_duplicate_folds: bool = False
    options: tuple[tuple[str, str], ...] = ()
    folds: tuple[str, ...] = ()  # only these folds of the split; empty: all of them
    tta: str | None = None  # score the sets extracted with this test-time augmentation (bench.tta)
    power: bool = False  # signed square root of every feature before the L2 normalisation
    drop_overlap: bool = False  # leave out (and count) images that are pictures a source stage trained on

    @property
    def store_path(self) -> str:
        return self.store or paths.default_store()

    def command(self) -> str:
        """The `bench evaluate` command line that regenerates this evaluation's rows."""
        args = ["bench", "evaluate", "--protocol", self.protocol, "--dataset", self.dataset,
                "--backbone", self.backbone, "--split", self.split]
        args += ["--finetuned"] * self.finetuned + ["--keep-duplicate-folds"] * self.keep_duplicate_folds
        args += ["--seed", str(self.seed)] if self.seed else []
        args += ["--root", str(self.root)] if self.root else []
        args += ["--store", str(self.store)] if self.store else []
        args += ["--reference-dir", str(self.reference_dir)] if self.reference_dir else []
        for key, value in self.options:
            args += ["--option", f"{key}={value}"]
        for fold in self.folds:
            args += ["--fold", fold]
        args += ["--tta", self.tta] if self.tta else []
        args += ["--power-norm"] * self.power
        args += ["--drop-overlap"] * self.drop_overlap
        return shlex.join(args)


@dataclass(frozen=True)
class Inputs:
    """The labelled manifest rows of the design, the folds over the full manifest, and where features come from."""

    request: Request
    design: Design
    manifest: pd.DataFrame  # the full manifest (for difficulty)
    fingerprint: str  # of the full manifest: ids, labels and file sizes
    labels: pd.Series  # image_id -> int label, only the rows the design keeps
    lesions: pd.Series  # image_id -> lesion id (the image itself where the dataset has none)
    folds: dict[str, tuple[np.ndarray, np.ndarray]]
    notes: tuple[str, ...]  # what the user should know (repeated reference folds, skipped images)


@dataclass(frozen=True)
class Evaluation:
    inputs: Inputs
    results: pd.DataFrame  # one row per fold
    predictions: pd.DataFrame  # one row per fold and test image


def prepare(request: Request) -> Inputs:
    """Manifest, design and folds; warnings from the fold files become notes."""
    design = get_design(request.protocol)
    manifest = plugins.get_dataset(request.dataset).manifest(request.root, **dict(request.options))
    labelled = apply_design(manifest, request.protocol)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folds = make_folds(manifest, request.split, seed=request.seed, reference_dir=request.reference_dir,
                           protocol=request.protocol, keep_duplicates=request.keep_duplicate_folds)
    folds = select_folds(folds, request.folds, request.split)
    labels = labelled.set_index("image_id")["label"]
    lesions = pd.Series(groups_of(manifest).to_numpy(), index=manifest["image_id"])
    notes = [str(w.message) for w in caught] + [lesion_note(manifest, request.dataset)]
    return Inputs(request, design, manifest, fingerprint(manifest), labels, lesions, folds,
                  tuple(note for note in notes if note))


def evaluate(request: Request) -> Evaluation:
    return run(prepare(request))


def run(inputs: Inputs) -> Evaluation:
    """The SVM protocol on every fold; features are read once (frozen) or per fold (fine-tuned)."""
    request = inputs.request
    read = features_reader(request.store_path, request.dataset, request.backbone, tta=request.tta,
                           power=request.power, image_ids=inputs.manifest["image_id"],
                           drop_overlap=request.drop_overlap)
    notes = list(inputs.notes)
    parts = []
    current = pd.Series(image_digests(inputs.manifest), index=inputs.manifest["image_id"].astype(str))
    for fold, (train_ids, test_ids) in inputs.folds.items():
        key = paths.feature_key(request.protocol, fold) if request.finetuned else "frozen"
        features = read(key)
        if request.finetuned:
            _check_fold_record(request, fold, features, train_ids, test_ids)
        _check_current(features, key, current, inputs, notes)
        parts.append((fold, features, _rows(train_ids, inputs.labels, features, notes),
                      _rows(test_ids, inputs.labels, features, notes)))
    fits = run_folds([Fold(f.features, train.position.to_numpy(), train.label.to_numpy(), test.position.to_numpy(),
                           inputs.lesions.reindex(train.image_id).to_numpy()) for _, f, train, test in parts],
                     seed=request.seed)
    results, predictions = [], []
    for (fold, features, train, test), fit in zip(parts, fits):
        metrics = fold_metrics(test.label.to_numpy(), fit.scores, inputs.design.positive)
        results.append({"fold": fold, **metrics, "n_train": len(train), "n_test": len(test), "c": fit.c,
                        "validation_auc": fit.validation_auc[fit.c],  # what `bench select` chooses by
                        "model_sha256": features.attrs.get("model_sha256", ""),
                        **_dropped(request, inputs.folds[fold][1], inputs.labels, features)})
        predictions.append(_predictions(fold, test, fit.scores, inputs))
    return _tables(replace(inputs, notes=tuple(dict.fromkeys(notes))), pd.DataFrame(results),
                   pd.concat(predictions, ignore_index=True))


def _tables(inputs: Inputs, results: pd.DataFrame, predictions: pd.DataFrame) -> Evaluation:
    """Add identity, the AUC interval and provenance; key columns first."""
    request = inputs.request
    ci = bootstrap_auc(predictions, seed=request.seed)
    identity = {"dataset": request.dataset, "protocol": request.protocol,
                "backbone": features_label(request.backbone, request.tta, request.power),
                "finetuned": request.finetuned, "split": request.split}
    provenance = {"seed": request.seed, "tta": request.tta or "none", "power_norm": request.power,
                  "auc_ci_low": ci.low, "auc_ci_high": ci.high,
                  "dataset_fingerprint": inputs.fingerprint, "bench_version": bench.__version__,
                  "command": request.command(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    results = results.assign(**identity, **provenance)
    predictions = predictions.assign(**identity)
    return Evaluation(inputs, _key_first(results), _key_first(predictions))


def _key_first(table: pd.DataFrame) -> pd.DataFrame:
    return table[KEY + [c for c in table.columns if c not in KEY]]


def _check_fold_record(request: Request, fold: str, features: FeatureSet, train_ids: np.ndarray,
                       test_ids: np.ndarray) -> None:
    """A fine-tuned set is scored only on the fold whose training part it was trained on."""
    problems = fold_record_problems(features.attrs.get("fold_record"), protocol=request.protocol,
                                    split=request.split, seed=request.seed, fold=fold, train_ids=train_ids,
                                    test_ids=test_ids)
    if problems:
        key = paths.feature_key(request.protocol, fold)
        seed = f" --seed {request.seed}" if request.seed else ""
        raise BenchError(
            f"refusing to score fine-tuned set {request.dataset}/{request.backbone}/{key} on fold {fold} "
            f"(split {request.split}, seed {request.seed}): {'; '.join(problems)}. Fine-tune for this fold and "
            f"extract again: `bench train --backbone {request.backbone} --dataset {request.dataset} --protocol "
            f"{request.protocol} --split {request.split} --fold {fold}{seed} ...`, then `bench extract ... "
            f"--protocol {request.protocol} --fold {fold} --overwrite`")


def _check_current(features: FeatureSet, key: str, current: pd.Series, inputs: Inputs, notes: list[str]) -> None:
    """Refuse features computed from images that changed since; labels are not an input of extraction, so a
    label-only change is scored with today's labels and a note."""
    now = current.reindex(features.image_ids).to_numpy()
    changed = features.image_ids[(now != features.digests) & pd.notna(now)]
    request = inputs.request
    if len(changed):
        command = FeatureStore(request.store_path).extract_command(request.dataset, request.backbone, key,
                                                                   str(request.root or "PATH"))
        raise BenchError(f"{len(changed)} image(s) of {request.dataset} changed since their features in "
                         f"{request.backbone}/{key} were extracted (e.g. {', '.join(changed[:3])}): those features are "
                         f"stale. Refresh them with `{command}` (it recomputes only what changed), then evaluate again")
    if features.attrs.get("labels_fingerprint") != label_fingerprint(inputs.manifest):
        notes.append("the dataset's labels changed since the features were extracted; features depend on the images "
                     "only, so they are scored with today's labels")


def _dropped(request: Request, test_ids: np.ndarray, labels: pd.Series, features: FeatureSet) -> dict:
    """With --drop-overlap, the row counts the test images left out as pictures a source stage trained on."""
    if not request.drop_overlap:
        return {}
    tested = labels.reindex(test_ids).dropna().index
    return {"n_overlap_dropped": int(tested.isin(features.attrs[DROPPED]).sum())}


def _rows(ids: np.ndarray, labels: pd.Series, features: FeatureSet, notes: list[str]) -> pd.DataFrame:
    """The fold part's images the design keeps, with their label and row in the feature set."""
    kept = labels.reindex(ids).dropna().astype(int)
    dropped = kept.index.isin(features.attrs.get(DROPPED, []))
    if dropped.any():
        notes.append("images that are pictures the backbone's source stage trained on are left out of every fold "
                     "(--drop-overlap); each row counts its test images left out in `n_overlap_dropped`")
    kept = kept[~dropped]
    position = pd.Index(features.image_ids).get_indexer(kept.index)
    skipped = set(features.attrs.get("skipped", []))
    missing = kept.index[position < 0]
    unreadable = [i for i in missing if i in skipped]
    if unreadable:
        notes.append(f"{len(unreadable)} image(s) left out because extraction could not read them")
    absent = [i for i in missing if i not in skipped]
    if absent:
        raise BenchError(f"{len(absent)} image(s) of this dataset have no features in the store (e.g. "
                         f"{', '.join(absent[:5])}): the set was extracted from fewer images (--limit?) or another "
                         "manifest; re-run `bench extract` for this dataset and backbone")
    return pd.DataFrame({"image_id": kept.index, "label": kept.to_numpy(), "position": position}).query(
        "position >= 0").reset_index(drop=True)


def _predictions(fold: str, test: pd.DataFrame, scores: np.ndarray, inputs: Inputs) -> pd.DataFrame:
    """One row per test image, with its lesion (the unit the bootstrap resamples): `score` is the positive
    (melanoma) decision value, `predicted` the SVM's class; 3 classes add `score_<class>`."""
    design = inputs.design
    frame = pd.DataFrame({"fold": fold, "image_id": test.image_id,
                          "lesion_id": inputs.lesions.reindex(test.image_id).to_numpy(), "label": test.label,
                          "predicted": predicted_class(scores), "score": positive_scores(scores, design.positive)})
    if scores.ndim == 2:
        for k, name in enumerate(design.classes):
            frame[f"score_{name}"] = scores[:, k]
    return frame
