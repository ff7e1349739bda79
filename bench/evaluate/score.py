"""Score a feature set under a protocol: manifest -> folds (on the full manifest) -> design -> SVM per fold.

The result is a per-fold table (the rows of `leaderboard/results.csv`) and a per-image table of test scores (what
the statistics, `bench compare` and the ROC curves are computed from).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Callable
from datetime import datetime, timezone

import numpy as np
import pandas as pd

import bench
from bench import paths
from bench.context import Context
from bench.dataset import fingerprint, image_digests, label_fingerprint
from bench.errors import BenchError
from bench.evaluate.features import DROPPED, reader as features_reader
from bench.overlap import find_overlap, refusal
from bench.evaluate.results import KEY
from bench.work import EXTERNAL, DatasetRef, Evaluate
from featurestore import FeatureSet, FeatureStore, feature_key
from protocols.designs import Design, apply_design, get_design
from protocols.errors import ProtocolError
from protocols.metrics import fold_metrics, positive_scores, predicted_class
from protocols.splits import fold_record_problems, groups_of, lesion_note, make_folds, select_folds
from protocols.stats import bootstrap_auc
from protocols.svm import Fold, run_folds



@dataclass(frozen=True)
class Inputs:
    """The labelled manifest rows of the design, the folds over the full manifest, and where features come from."""

    unit: Evaluate
    ctx: Context
    design: Design
    manifest: pd.DataFrame  # the full manifest (for difficulty)
    fingerprint: str  # of the full manifest: ids, labels and file sizes
    labels: pd.Series  # image_id -> int label, only the rows the design keeps
    lesions: pd.Series  # image_id -> lesion id (the image itself where the dataset has none)
    folds: dict[str, tuple[np.ndarray, np.ndarray]]
    notes: tuple[str, ...]  # what the user should know (repeated reference folds, skipped images)
    training: Training | None = None  # an external evaluation's training dataset


@dataclass(frozen=True)
class Training:
    """The dataset an external evaluation's SVM also learns on, whole. Its ids carry `prefix`, so that they never
    meet the scored dataset's in the folds, labels and lesions."""

    manifest: pd.DataFrame
    fingerprint: str
    prefix: str
    overlap: tuple[str, ...] = ()  # scored images that are pictures of this dataset (left out: --drop-overlap)

    def ids(self, ids: pd.Series | np.ndarray) -> np.ndarray:
        return (self.prefix + pd.Series(ids, dtype=str)).to_numpy()


@dataclass(frozen=True)
class Evaluation:
    inputs: Inputs
    results: pd.DataFrame  # one row per fold
    predictions: pd.DataFrame  # one row per fold and test image


def prepare(unit: Evaluate, ctx: Context) -> Inputs:
    """Manifest, design and folds; warnings from the fold files become notes. An external evaluation adds all of
    its training dataset to every fold's training part."""
    design = get_design(unit.protocol)
    manifest = unit.dataset.manifest(ctx)
    named = unit.dataset.adapter if unit.train_dataset else None
    labels, lesions = _labels(manifest, unit.protocol, named), _lesions(manifest)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folds = _folds(unit, manifest)
    notes = [str(w.message) for w in caught] + [lesion_note(manifest, unit.dataset.adapter)]
    inputs = Inputs(unit, ctx, design, manifest, fingerprint(manifest), labels, lesions, folds,
                    tuple(note for note in notes if note))
    return _with_training(inputs) if unit.train_dataset else inputs


def _labels(manifest: pd.DataFrame, protocol: str, dataset: str | None = None) -> pd.Series:
    """Labels by image id; `dataset` names the dataset in errors (an external evaluation has two)."""
    try:
        return apply_design(manifest, protocol).set_index("image_id")["label"]
    except ProtocolError as exc:
        if dataset is None:
            raise
        raise BenchError(f"{dataset}: {exc}") from None


def _lesions(manifest: pd.DataFrame) -> pd.Series:
    return pd.Series(groups_of(manifest).to_numpy(), index=manifest["image_id"])


def _folds(unit: Evaluate, manifest: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if unit.split == EXTERNAL:
        if not unit.train_dataset:
            raise BenchError("split 'external' scores a dataset on an SVM trained on another: give --train-dataset")
        return {"all": (np.array([], dtype=object), manifest["image_id"].astype(str).to_numpy())}
    folds = make_folds(manifest, unit.split, seed=unit.seed, reference_dir=unit.reference, protocol=unit.protocol,
                       keep_duplicates=unit.keep_duplicate_folds)
    return select_folds(folds, unit.folds, unit.split)


def _with_training(inputs: Inputs) -> Inputs:
    """The training dataset's labelled images in every fold's training part, after checks: the design's classes
    on both sides, and no model fine-tuned on one side only."""
    unit = inputs.unit
    if unit.finetuned:
        raise BenchError("an external evaluation scores frozen features: a model fine-tuned on the training "
                         "dataset cannot yet be extracted on another one; drop --finetuned")
    train = unit.train_dataset.manifest(inputs.ctx)
    overlap = find_overlap(train, inputs.manifest)
    if len(overlap) and not unit.drop_overlap:
        raise refusal(overlap, unit.train_dataset.adapter, unit.dataset.adapter)
    training = Training(train, fingerprint(train), f"{unit.train_dataset.adapter}:", tuple(overlap.test_ids))
    train_labels = _labels(train, unit.protocol, unit.train_dataset.adapter)
    for side, labels in ((unit.train_dataset.adapter, train_labels), (unit.dataset.adapter, inputs.labels)):
        lacking = [c for i, c in enumerate(inputs.design.classes) if not (labels == i).any()]
        if lacking:
            raise BenchError(f"{unit.protocol} needs images of every class on both sides, and {side} has none of "
                             f"{', '.join(lacking)}: choose a design both datasets hold (e.g. mela-vs-ben)")
    train_ids = training.ids(train_labels.index)
    folds = {k: (np.concatenate([train_ids, fit]), test) for k, (fit, test) in inputs.folds.items()}
    labels = pd.concat([pd.Series(train_labels.to_numpy(), index=train_ids), inputs.labels])
    lesions = pd.concat([pd.Series(training.ids(_lesions(train).to_numpy()), index=training.ids(train["image_id"])),
                         inputs.lesions])
    return replace(inputs, folds=folds, labels=labels, lesions=lesions, training=training)


def evaluate(unit: Evaluate, ctx: Context) -> Evaluation:
    return run(prepare(unit, ctx))


def run(inputs: Inputs) -> Evaluation:
    """The SVM protocol on every fold; features are read once (frozen) or per fold (fine-tuned)."""
    unit = inputs.unit
    read = _reader(inputs, unit.dataset, inputs.manifest["image_id"])
    notes = list(inputs.notes)
    parts = []
    learnt_too = _training_features(inputs, notes) if inputs.training else None
    current = _digests(inputs.manifest)
    for fold, (train_ids, test_ids) in inputs.folds.items():
        features = read(fold if unit.finetuned else None)
        if unit.finetuned:
            _check_fold_record(unit, fold, features, train_ids, test_ids)
        _check_current(features, unit.dataset, inputs.manifest, current, fold, inputs, notes)
        if learnt_too is not None:
            features = _joined(learnt_too, features, inputs)
        parts.append((fold, features, _rows(train_ids, inputs.labels, features, notes),
                      _rows(test_ids, inputs.labels, features, notes)))
    fits = run_folds([Fold(f.features, train.position.to_numpy(), train.label.to_numpy(), test.position.to_numpy(),
                           inputs.lesions.reindex(train.image_id).to_numpy()) for _, f, train, test in parts],
                     seed=unit.seed)
    results, predictions = [], []
    for (fold, features, train, test), fit in zip(parts, fits):
        metrics = fold_metrics(test.label.to_numpy(), fit.scores, inputs.design.positive)
        results.append({"fold": fold, **metrics, "n_train": len(train), "n_test": len(test), "c": fit.c,
                        "validation_auc": fit.validation_auc[fit.c],  # what `bench select` chooses by
                        "model_sha256": features.attrs.get("model_sha256", ""),
                        **_dropped(unit, inputs.folds[fold][1], inputs.labels, features)})
        predictions.append(_predictions(fold, test, fit.scores, inputs))
    return _tables(replace(inputs, notes=tuple(dict.fromkeys(notes))), pd.DataFrame(results),
                   pd.concat(predictions, ignore_index=True))


def _reader(inputs: Inputs, dataset: DatasetRef, scored: pd.Series | tuple = ()) -> Callable[[str | None], FeatureSet]:
    """`scored`: the images scored from these sets, which the backbone's source stage must not have trained on."""
    unit = inputs.unit
    return features_reader(inputs.ctx.store, dataset.adapter, unit.backbone, unit.protocol, tta=unit.tta,
                           power=unit.power, image_ids=scored, drop_overlap=unit.drop_overlap)


def _training_features(inputs: Inputs, notes: list[str]) -> FeatureSet:
    """The training dataset's frozen set, checked like the scored one's (none of it is scored: a source stage may
    have trained on it)."""
    train, training = inputs.unit.train_dataset, inputs.training
    features = _reader(inputs, train)(None)
    _check_current(features, train, training.manifest, _digests(training.manifest), None, inputs, notes)
    return features


def _joined(training: FeatureSet, scored: FeatureSet, inputs: Inputs) -> FeatureSet:
    """One set of both datasets' rows (the training ones prefixed), if one model made both the same way."""
    unit = inputs.unit
    names = (unit.train_dataset.adapter, unit.dataset.adapter)
    for what, attr in (("model (weights)", "model_sha256"), ("preprocessing (input size, mean, std)", "preprocessing"),
                       ("test-time augmentation", "tta")):
        if training.attrs.get(attr) != scored.attrs.get(attr):
            raise BenchError(f"the {names[0]} and {names[1]} feature sets of {unit.backbone} differ in {what}: "
                             f"{training.attrs.get(attr)} vs {scored.attrs.get(attr)}. Extract both with the same "
                             "backbone, weights and settings (`bench extract` on each dataset)")
    return FeatureSet(image_ids=np.concatenate([inputs.training.ids(training.image_ids), scored.image_ids]),
                      features=np.vstack([training.features, scored.features]),
                      digests=np.concatenate([training.digests, scored.digests]),
                      attrs={**scored.attrs, "skipped": [*inputs.training.ids(training.attrs.get("skipped", [])),
                                                         *scored.attrs.get("skipped", [])],
                             DROPPED: sorted({*scored.attrs.get(DROPPED, []), *inputs.training.overlap})})


def _tables(inputs: Inputs, results: pd.DataFrame, predictions: pd.DataFrame) -> Evaluation:
    """Add identity, the AUC interval and provenance; key columns first."""
    unit = inputs.unit
    ci = bootstrap_auc(predictions, seed=unit.seed)
    identity = {"dataset": unit.target, "protocol": unit.protocol, "backbone": unit.features,
                "finetuned": unit.finetuned, "split": unit.split, "seed": unit.seed}
    store = inputs.ctx.store if inputs.ctx.store != paths.default_store() else None
    provenance = {"tta": unit.tta or "none", "power_norm": unit.power,
                  "auc_ci_low": ci.low, "auc_ci_high": ci.high,
                  "dataset_fingerprint": inputs.fingerprint, "bench_version": bench.__version__,
                  **({"train_dataset": unit.train_dataset.adapter,
                      "train_dataset_fingerprint": inputs.training.fingerprint} if inputs.training else {}),
                  "command": unit.command(store), "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    results = results.assign(**identity, **provenance)
    predictions = predictions.assign(**identity)
    return Evaluation(inputs, _key_first(results), _key_first(predictions))


def _key_first(table: pd.DataFrame) -> pd.DataFrame:
    return table[KEY + [c for c in table.columns if c not in KEY]]


def _check_fold_record(unit: Evaluate, fold: str, features: FeatureSet, train_ids: np.ndarray,
                       test_ids: np.ndarray) -> None:
    """A fine-tuned set is scored only on the fold whose training part it was trained on."""
    problems = fold_record_problems(features.attrs.get("fold_record"), protocol=unit.protocol, split=unit.split,
                                    seed=unit.seed, fold=fold, train_ids=train_ids, test_ids=test_ids)
    if problems:
        key = feature_key(unit.protocol, fold)
        seed = f" --seed {unit.seed}" if unit.seed else ""
        dataset = unit.dataset.adapter
        raise BenchError(
            f"refusing to score fine-tuned set {dataset}/{unit.backbone}/{key} on fold {fold} "
            f"(split {unit.split}, seed {unit.seed}): {'; '.join(problems)}. Fine-tune for this fold and "
            f"extract again: `bench train --backbone {unit.backbone} --dataset {dataset} --protocol "
            f"{unit.protocol} --split {unit.split} --fold {fold}{seed} ...`, then `bench extract ... "
            f"--protocol {unit.protocol} --fold {fold} --overwrite`")


def _digests(manifest: pd.DataFrame) -> pd.Series:
    """The images' content digests today, by id."""
    return pd.Series(image_digests(manifest), index=manifest["image_id"].astype(str))


def _check_current(features: FeatureSet, dataset: DatasetRef, manifest: pd.DataFrame, current: pd.Series,
                   fold: str | None, inputs: Inputs, notes: list[str]) -> None:
    """Refuse features computed from images that changed since; labels are not an input of extraction, so a
    label-only change is scored with today's labels and a note."""
    now = current.reindex(features.image_ids).to_numpy()
    changed = features.image_ids[(now != features.digests) & pd.notna(now)]
    unit = inputs.unit
    key = feature_key(unit.protocol, fold if unit.finetuned else None, unit.tta)
    if len(changed):
        command = FeatureStore(inputs.ctx.store).extract_command(dataset.adapter, unit.backbone, key,
                                                                 str(dataset.root or "PATH"))
        raise BenchError(f"{len(changed)} image(s) of {dataset.adapter} changed since their features in "
                         f"{unit.backbone}/{key} were extracted (e.g. {', '.join(changed[:3])}): those features are "
                         f"stale. Refresh them with `{command}` (it recomputes only what changed), then evaluate again")
    if features.attrs.get("labels_fingerprint") != label_fingerprint(manifest):
        notes.append("the dataset's labels changed since the features were extracted; features depend on the images "
                     "only, so they are scored with today's labels")


def _dropped(unit: Evaluate, test_ids: np.ndarray, labels: pd.Series, features: FeatureSet) -> dict:
    """With --drop-overlap, the row counts the test images left out as pictures a model or SVM trained on."""
    if not unit.drop_overlap:
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
