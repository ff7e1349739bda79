"""The paper's SVM protocol per fold: L2-normalise, pick C by validation AUC inside the training fold, refit on
the whole training fold, score the test fold with the decision function (threshold 0).

Only a fold's training part reaches the validation fits, so no test image can influence C.

C is searched in decades, starting from 0.1 and 1 and walking outwards only while the best C found is at an edge
of what has been tried (within 1e-3 to 1e3): the search ends at the validation peak wherever it lies, and skips
the large-C fits, the slowest ones, when they cannot win. All fits of one round (every fold, every C to try),
and then all refits, are independent and liblinear trains without the GIL, so they run on a thread pool.
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

C_START = (0.1, 1.0)
C_RANGE = (1e-3, 1e3)
VALIDATION_FRACTION = 0.1
SOLVER = "liblinear primal"  # part of a study evaluation's fingerprint: another solver gives other numbers


@dataclass(frozen=True)
class Fold:
    """One fold's inputs: rows of `features` (a whole feature set, shared between folds) picked by position."""

    features: np.ndarray  # (n, d)
    train: np.ndarray  # positions of the training images
    labels: np.ndarray  # their labels (ints 0..k-1)
    test: np.ndarray  # positions of the test images


@dataclass(frozen=True)
class FoldFit:
    """What one fold produced: the chosen C, the validation AUC of every C tried, the test decision values."""

    c: float
    validation_auc: dict[float, float]
    scores: np.ndarray  # (n_test,) for two classes, (n_test, k) one-vs-rest for k > 2


@dataclass(frozen=True)
class _Prepared:
    x: np.ndarray  # unit rows
    train: np.ndarray
    labels: np.ndarray
    test: np.ndarray
    fit: np.ndarray  # positions within `train` of the 90% the validation fits train on
    val: np.ndarray  # the stratified 10% they are scored on


def linear_svm(c: float) -> LinearSVC:
    """liblinear's squared-hinge L2 SVM, solved in the primal (trust-region Newton). The dual solver would be
    faster for C <= 1 but visits samples in an order drawn from liblinear's one global random generator, which the
    fits running side by side on the thread pool share: on HAM10000 that moved a fold's validation AUC by 4e-5,
    enough to flip its C and its test AUC by 1.6 points from one run to the next. The primal solver draws nothing."""
    return LinearSVC(C=c, dual=False, tol=1e-3, max_iter=1000)


def run_folds(folds: list[Fold], *, seed: int = 0, n_jobs: int = -1) -> list[FoldFit]:
    """Choose C on each fold's training part, refit on all of it, return the test decision values."""
    unit = {id(f.features): normalize(f.features) for f in folds}  # once per feature set, not per fold
    prepared = [_prepare(f, unit[id(f.features)], seed) for f in folds]
    parallel = Parallel(n_jobs=n_jobs, prefer="threads")
    validation = _search_c(prepared, parallel)
    best = [max(v, key=lambda c: (v[c], -c)) for v in validation]  # among equals the smallest: most regularised
    scores = parallel(delayed(_refit_and_score)(p, c) for p, c in zip(prepared, best))
    return [FoldFit(c, dict(sorted(v.items())), s) for c, v, s in zip(best, validation, scores)]


def run_fold(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, *, seed: int = 0) -> FoldFit:
    """One fold given as arrays (`run_folds` for a single fold)."""
    features = np.concatenate([x_train, x_test])
    fold = Fold(features, np.arange(len(x_train)), np.asarray(y_train), np.arange(len(x_train), len(features)))
    return run_folds([fold], seed=seed)[0]


def _search_c(prepared: list[_Prepared], parallel: Parallel) -> list[dict[float, float]]:
    """Validation AUC per C tried, per fold; rounds of fits until every fold's best C is inside its tried range."""
    validation: list[dict[float, float]] = [{} for _ in prepared]
    todo = [(i, c) for i in range(len(prepared)) for c in C_START]
    while todo:
        todo.sort(key=lambda task: -task[1])  # large C is slowest: start it first
        for (i, c), value in zip(todo, parallel(delayed(_validation_auc)(prepared[i], c) for i, c in todo)):
            validation[i][c] = value
        todo = [(i, c) for i, v in enumerate(validation) if (c := _next_c(v)) is not None]
    return validation


def _next_c(tried: dict[float, float]) -> float | None:
    """The decade beyond the best C when that best is the largest or smallest tried (and within C_RANGE)."""
    best = max(tried, key=lambda c: (tried[c], -c))
    step = 10.0 if best == max(tried) else 0.1 if best == min(tried) else None
    if step is None or not C_RANGE[0] <= best * step <= C_RANGE[1]:
        return None
    return float(np.round(best * step, 6))  # 0.1 * 10 == 1.0 exactly, so dict keys stay tidy


def _prepare(fold: Fold, unit: np.ndarray, seed: int) -> _Prepared:
    _check_classes(fold.labels)
    split = StratifiedShuffleSplit(n_splits=1, test_size=VALIDATION_FRACTION, random_state=seed)
    fit, val = next(split.split(np.zeros(len(fold.labels)), fold.labels))
    return _Prepared(unit, np.asarray(fold.train), np.asarray(fold.labels), np.asarray(fold.test), fit, val)


def _validation_auc(p: _Prepared, c: float) -> float:
    model = linear_svm(c).fit(p.x[p.train[p.fit]], p.labels[p.fit])
    return auc(p.labels[p.val], model.decision_function(p.x[p.train[p.val]]))


def _refit_and_score(p: _Prepared, c: float) -> np.ndarray:
    return linear_svm(c).fit(p.x[p.train], p.labels).decision_function(p.x[p.test])


def _check_classes(y: np.ndarray) -> None:
    """The 10% validation split needs at least two images of each class (one to fit, one to validate)."""
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2 or counts.min() < 2:
        raise ProtocolError(f"a training fold has class counts {dict(zip(classes.tolist(), counts.tolist()))}; "
                            "every class needs at least 2 images to choose C (use a larger dataset or fewer folds)")
