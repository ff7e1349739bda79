"""The paper's SVM protocol for one fold: L2-normalise, pick C by validation AUC inside the training fold, refit,
score the test fold. Only the training fold ever reaches `choose_c`, so no test image can influence C.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
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


def linear_svm(c: float) -> LinearSVC:
    # primal liblinear: with n_samples > n_features it beats the dual by far and needs no iteration cap
    return LinearSVC(C=c, dual=False, tol=1e-3)


def choose_c(x: np.ndarray, y: np.ndarray, *, seed: int = 0, grid: tuple[float, ...] = C_GRID) -> dict[float, float]:
    """Validation AUC of each C on a stratified 10% split of the (normalised) training fold."""
    _check_classes(y)
    split = StratifiedShuffleSplit(n_splits=1, test_size=VALIDATION_FRACTION, random_state=seed)
    fit, val = next(split.split(x, y))
    return {c: auc(y[val], linear_svm(c).fit(x[fit], y[fit]).decision_function(x[val])) for c in grid}


def run_fold(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, *, seed: int = 0,
             grid: tuple[float, ...] = C_GRID) -> FoldFit:
    """Choose C on the training fold, refit on all of it, return the test fold's decision values."""
    x_train, x_test = normalize(x_train), normalize(x_test)
    validation = choose_c(x_train, y_train, seed=seed, grid=grid)
    best = max(validation, key=validation.get)  # the first (smallest) C among equals: the most regularised
    model = linear_svm(best).fit(x_train, y_train)
    return FoldFit(best, validation, model.decision_function(x_test))


def _check_classes(y: np.ndarray) -> None:
    """The 10% validation split needs at least two images of each class (one to fit, one to validate)."""
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2 or counts.min() < 2:
        raise ProtocolError(f"a training fold has class counts {dict(zip(classes.tolist(), counts.tolist()))}; "
                            "every class needs at least 2 images to choose C (use a larger dataset or fewer folds)")
