"""The paper's SVM protocol per fold, as its reference code ran it (learningtitans/melanoma-transfer, `src/blend.py`,
`estimator()`): L2-normalised features, a linear SVM with class weights balanced, C chosen from 1e-3 ... 1e4 by the
mean validation AUC over 10 splits of the training fold, a refit on the whole training fold, and the test images
scored by its decision function (threshold 0).

Only a fold's training part reaches the validation fits, so no test image can influence C. Where we differ from
the reference, and why:
- The 10 validation splits are the folds of a stratified 10-fold split of the training part that is grouped by
  lesion (each about 10 %), so no validation image shares a lesion with the images its SVM was fitted on; the
  reference drew 10 independent, ungrouped 10 % splits, which on HAM10000 put most validation melanomas beside
  another image of the same lesion.
- A tie in validation AUC (a saturated one, typically) goes to the C nearest 1, then to the smaller C: taking the
  smallest C of a tie leaves every test score below 0, i.e. SE 0.
- The loss is the squared hinge (scikit-learn's `LinearSVC`) rather than `SVC`'s hinge, solved exactly along the C
  path by `protocols.l2svm`, which makes the 800 fits of a 5x2 evaluation on HAM10000 take about 40 s on 2 cores,
  not an hour.
More than two classes: one balanced SVM per class against the rest; the predicted class is the highest score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from joblib import Parallel, delayed
from sklearn.preprocessing import normalize
from threadpoolctl import threadpool_limits

from protocols.errors import ProtocolError
from protocols.l2svm import Sums, decision, svm_path
from protocols.metrics import auc
from protocols.splits import stratified_group_folds

C_GRID = tuple(10.0**k for k in range(-3, 5))
VALIDATION_SPLITS = 10
FIRST_ROUND = 5  # C = 1e-3 ... 10 fitted on every split before the first look at the validation curve
BEYOND_PEAK = 2  # decades of C fitted past the best one before the search stops
SOLVER = (f"balanced squared-hinge linear SVM (finite Newton path); C in 1e-3..1e4 by mean AUC over "
          f"{VALIDATION_SPLITS} lesion-grouped stratified validation folds, up to {BEYOND_PEAK} decades past the "
          "best; ties to C nearest 1, then smaller")


@dataclass(frozen=True)
class Fold:
    """One fold's inputs: rows of `features` (a whole feature set, shared between folds) picked by position, and
    the lesion of each training image (None: every image is its own lesion)."""

    features: np.ndarray  # (n, d)
    train: np.ndarray  # positions of the training images
    labels: np.ndarray  # their labels (ints 0..k-1)
    test: np.ndarray  # positions of the test images
    groups: np.ndarray | None = None  # lesion id of each training image


@dataclass(frozen=True)
class FoldFit:
    """What one fold produced: the chosen C, the mean validation AUC of every C, the test decision values."""

    c: float
    validation_auc: dict[float, float]
    scores: np.ndarray  # (n_test,) for two classes, (n_test, k) one-vs-rest for k > 2


@dataclass(frozen=True)
class _Prepared:
    train: np.ndarray  # (n_train, r) unit rows, float64 (r < d where the rows span fewer dimensions)
    labels: np.ndarray
    test: np.ndarray
    splits: list[tuple[np.ndarray, np.ndarray]]  # (fit, validation) positions within `train`
    sums: list[Sums]  # of the training rows of each label

    def sums_without(self, rows: np.ndarray) -> list[Sums]:
        """Each label's sums over the training rows that are not in `rows`."""
        return [total - Sums.of(self.train[rows][self.labels[rows] == k]) for k, total in enumerate(self.sums)]


def run_folds(folds: list[Fold], *, seed: int = 0, n_jobs: int = -1) -> list[FoldFit]:
    """Choose C on each fold's training part, refit on all of it, return the test decision values."""
    unit = {id(f.features): normalize(f.features) for f in folds}  # once per feature set, not per fold
    # one BLAS thread per fit and the fits side by side: BLAS's own threads would fight over the cores
    with threadpool_limits(limits=1, user_api="blas"):
        parallel = Parallel(n_jobs=n_jobs, prefer="threads")
        prepared = parallel(delayed(_prepare)(f, unit[id(f.features)], seed) for f in folds)
        validation = _search_c(prepared, parallel)
        best = [choose_c(v) for v in validation]
        scores = parallel(delayed(_refit_and_score)(p, c) for p, c in zip(prepared, best))
    return [FoldFit(c, v, s) for c, v, s in zip(best, validation, scores)]


def _search_c(prepared: list[_Prepared], parallel: Parallel) -> list[dict[float, float]]:
    """Mean validation AUC per C, per fold. Every split walks up the grid from its smallest C; a fold stops once
    its best C has `BEYOND_PEAK` larger values of C fitted and scored after it: the large-C fits are the slowest,
    and past its peak a validation curve only falls."""
    splits = [(i, k) for i, p in enumerate(prepared) for k in range(len(p.splits))]
    aucs: dict[tuple[int, int], list[float]] = {s: [] for s in splits}
    ends: dict[tuple[int, int], np.ndarray | None] = {s: None for s in splits}
    todo = {i: C_GRID[:FIRST_ROUND] for i in range(len(prepared))}
    while todo:
        runs = [(i, k) for i, k in splits if i in todo]
        done = parallel(delayed(_validation_aucs)(prepared[i], *prepared[i].splits[k], todo[i], ends[i, k])
                        for i, k in runs)
        for split, (values, end) in zip(runs, done):
            aucs[split] += values
            ends[split] = end
        validation = [_mean_by_c([aucs[i, k] for k in range(len(p.splits))]) for i, p in enumerate(prepared)]
        todo = {i: (C_GRID[len(v)],) for i, v in enumerate(validation) if _unfinished(v)}
    return validation


def _unfinished(validation: dict[float, float]) -> bool:
    fitted = len(validation)
    return fitted < len(C_GRID) and C_GRID.index(choose_c(validation)) + BEYOND_PEAK >= fitted


def run_fold(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, *, groups: np.ndarray | None = None,
             seed: int = 0) -> FoldFit:
    """One fold given as arrays (`run_folds` for a single fold)."""
    features = np.concatenate([x_train, x_test])
    fold = Fold(features, np.arange(len(x_train)), np.asarray(y_train), np.arange(len(x_train), len(features)),
                groups)
    return run_folds([fold], seed=seed)[0]


def choose_c(validation: dict[float, float]) -> float:
    """The C of the highest mean validation AUC; among equals the one nearest 1, then the smaller."""
    best = max(validation.values())
    tied = [c for c, value in validation.items() if value >= best - 1e-12]
    return min(tied, key=lambda c: (abs(np.log10(c)), c))


def validation_splits(labels: np.ndarray, groups: np.ndarray | None, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The folds of a stratified, lesion-grouped `VALIDATION_SPLITS`-fold split, as (fit, validation) positions;
    those whose fit or validation part lacks a class (possible on tiny sets) are left out."""
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    n_splits = min(VALIDATION_SPLITS, len(np.unique(groups)))
    classes = len(np.unique(labels))
    splits = [(np.flatnonzero(~val), np.flatnonzero(val))
              for val in stratified_group_folds(labels, groups, n_splits, seed)]
    splits = [(fit, val) for fit, val in splits
              if len(np.unique(labels[fit])) == classes and len(np.unique(labels[val])) == classes]
    if not splits:
        raise ProtocolError("no validation split of a training fold holds every class on both sides: the fold has "
                            "too few images or lesions of a class to choose C (use a larger dataset or fewer folds)")
    return splits


def _prepare(fold: Fold, unit: np.ndarray, seed: int) -> _Prepared:
    labels = np.asarray(fold.labels)
    _check_classes(labels)
    train, test = unit[fold.train].astype(np.float64), unit[fold.test].astype(np.float64)
    rows = len(train) + len(test)
    if rows < train.shape[1]:
        # the solution lies in the span of the training rows: the same inner products in rows-many dimensions
        _, _, basis = np.linalg.svd(np.concatenate([train, test]), full_matrices=False)
        train, test = train @ basis.T, test @ basis.T
    sums = [Sums.of(train[labels == k]) for k in range(labels.max() + 1)]
    return _Prepared(train, labels, test, validation_splits(labels, fold.groups, seed), sums)


def _paths(x: np.ndarray, labels: np.ndarray, cs: tuple[float, ...], start: np.ndarray | None = None,
           sums: list[Sums] | None = None) -> np.ndarray:
    """(classes or 1, len(cs), d + 1): one path for two classes (label 1 positive), else one per class vs rest;
    `start` (classes or 1, d + 1) continues paths that ended at a smaller C; else `sums` (each label's, over x)
    starts them."""
    targets = [1] if labels.max() == 1 else range(labels.max() + 1)
    if start is not None:
        return np.array([svm_path(x, np.where(labels == k, 1, -1), cs, start[n]) for n, k in enumerate(targets)])
    return np.array([svm_path(x, np.where(labels == k, 1, -1), cs, sums=(sums[k], _sum_of_others(sums, k)))
                     for k in targets])


def _sum_of_others(sums: list[Sums], k: int) -> Sums:
    others = [s for j, s in enumerate(sums) if j != k]
    return sum(others[1:], others[0])


def _scores(x: np.ndarray, paths: np.ndarray) -> np.ndarray:
    """(n, len(cs)) for one path, (n, len(cs), classes) for one per class."""
    values = np.stack([decision(x, p) for p in paths], axis=-1)
    return values[..., 0] if len(paths) == 1 else values


def _validation_aucs(p: _Prepared, fit: np.ndarray, val: np.ndarray, cs: tuple[float, ...],
                     start: np.ndarray | None) -> tuple[list[float], np.ndarray]:
    """The validation AUC of each C in `cs`, and where the paths ended (to continue them)."""
    paths = _paths(p.train[fit], p.labels[fit], cs, start, None if start is not None else p.sums_without(val))
    scores = _scores(p.train[val], paths)
    return [auc(p.labels[val], scores[:, k]) for k in range(len(cs))], paths[:, -1]


def _mean_by_c(aucs: list[list[float]]) -> dict[float, float]:
    return dict(zip(C_GRID, np.mean(aucs, axis=0).tolist()))


def _refit_and_score(p: _Prepared, c: float) -> np.ndarray:
    cs = tuple(v for v in C_GRID if v <= c)  # the path up to c: each C warm-starts the next
    return _scores(p.test, _paths(p.train, p.labels, cs, sums=p.sums))[:, -1]


def _check_classes(y: np.ndarray) -> None:
    """The validation splits need at least two images of each class (one to fit, one to validate)."""
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2 or counts.min() < 2:
        raise ProtocolError(f"a training fold has class counts {dict(zip(classes.tolist(), counts.tolist()))}; "
                            "every class needs at least 2 images to choose C (use a larger dataset or fewer folds)")
