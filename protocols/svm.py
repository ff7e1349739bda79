"""The paper's SVM protocol per fold: L2-normalise, pick C by validation AUC inside the training fold, refit on
the whole training fold, score the test fold with the decision function (threshold 0).

Only a fold's training part reaches the validation fits, so no test image can influence C. All the fits of an
evaluation (every fold x every C, then every refit) are independent, and liblinear trains without the GIL, so
they run on a thread pool over all cores, sharing the fold arrays without copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from joblib import Parallel, delayed
from sklearn.model_selection import StratifiedShuffleSplit
from sklearn.preprocessing import normalize
from sklearn.svm import LinearSVC

from protocols.errors import ProtocolError
from protocols.metrics import auc

C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)
VALIDATION_FRACTION = 0.1


@dataclass(frozen=True)
class FoldFit:
    """What one fold produced: the chosen C, its validation AUC per C, and the test decision values."""

    c: float
    validation_auc: dict[float, float]
    scores: np.ndarray  # (n_test,) for two classes, (n_test, k) one-vs-rest for k > 2


@dataclass(frozen=True)
class _Fold:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    fit: np.ndarray  # indices into the training part: the 90% the validation fits train on
    val: np.ndarray  # the stratified 10% they are scored on


def linear_svm(c: float) -> LinearSVC:
    # primal liblinear: with more images than feature dimensions it beats the dual by far at every C
    return LinearSVC(C=c, dual=False, tol=1e-3)


def run_folds(folds: list[tuple[np.ndarray, np.ndarray, np.ndarray]], *, seed: int = 0,
              grid: tuple[float, ...] = C_GRID, n_jobs: int = -1) -> list[FoldFit]:
    """(x_train, y_train, x_test) per fold -> the fold's chosen C, validation AUCs and test decision values."""
    prepared = [_prepare(*fold, seed) for fold in folds]
    parallel = Parallel(n_jobs=n_jobs, prefer="threads")
    aucs = parallel(delayed(_validation_auc)(fold, c) for fold in prepared for c in grid)
    validation = [dict(zip(grid, aucs[i * len(grid):(i + 1) * len(grid)])) for i in range(len(prepared))]
    best = [max(v, key=v.get) for v in validation]  # the first (smallest) C among equals: the most regularised
    scores = parallel(delayed(_refit_and_score)(fold, c) for fold, c in zip(prepared, best))
    return [FoldFit(c, v, s) for c, v, s in zip(best, validation, scores)]


def run_fold(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, *, seed: int = 0,
             grid: tuple[float, ...] = C_GRID) -> FoldFit:
    """One fold of `run_folds`."""
    return run_folds([(x_train, y_train, x_test)], seed=seed, grid=grid)[0]


def _prepare(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, seed: int) -> _Fold:
    """Normalise once, in float64 (what liblinear takes, so no fit converts again), and split off validation."""
    _check_classes(y_train)
    split = StratifiedShuffleSplit(n_splits=1, test_size=VALIDATION_FRACTION, random_state=seed)
    fit, val = next(split.split(np.zeros(len(y_train)), y_train))
    return _Fold(_unit_rows(x_train), np.asarray(y_train), _unit_rows(x_test), fit, val)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return normalize(np.asarray(x, dtype=np.float64))


def _validation_auc(fold: _Fold, c: float) -> float:
    model = linear_svm(c).fit(fold.x_train[fold.fit], fold.y_train[fold.fit])
    return auc(fold.y_train[fold.val], model.decision_function(fold.x_train[fold.val]))


def _refit_and_score(fold: _Fold, c: float) -> np.ndarray:
    return linear_svm(c).fit(fold.x_train, fold.y_train).decision_function(fold.x_test)


def _check_classes(y: np.ndarray) -> None:
    """The 10% validation split needs at least two images of each class (one to fit, one to validate)."""
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2 or counts.min() < 2:
        raise ProtocolError(f"a training fold has class counts {dict(zip(classes.tolist(), counts.tolist()))}; "
                            "every class needs at least 2 images to choose C (use a larger dataset or fewer folds)")
