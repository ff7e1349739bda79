"""A class-balanced linear SVM with the squared hinge loss, solved exactly along a path of C values.

The objective is liblinear's L2-loss SVM (scikit-learn's `LinearSVC(class_weight="balanced")`, bias regularised
like liblinear's with intercept_scaling 1):

    min_w  1/2 |w|^2 + C sum_i c_i max(0, 1 - y_i w.[x_i, 1])^2,   c_i = n / (2 n_{class of i})

It is solved by the finite Newton method of Keerthi & DeCoste (JMLR 2005): with the set of margin violators fixed
the objective is a quadratic whose minimiser is one linear solve, and an exact line search over the
piecewise-quadratic objective moves to the next set; the method ends, exactly, when the set no longer changes. The
Hessian needs only the Gram matrix of the violators, which changes by a few rows from one step to the next and not
at all with C, so it is updated rather than rebuilt, and each C starts from the previous C's solution. This is why
we do not call liblinear: it can neither warm-start nor share that matrix, and its primal solver takes seconds
per fit at large C, where a path over 8 values of C costs this one about as much as a single Newton solve.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy.linalg import cho_solve

MAX_NEWTON_STEPS = 100  # per C; convergence is finite and, warm-started, takes a handful


def balanced_weights(y: np.ndarray) -> np.ndarray:
    """c_i = n / (2 n_{class of i}) for labels y in {-1, +1}: each class carries half the loss."""
    positive = y > 0
    return np.where(positive, len(y) / (2 * positive.sum()), len(y) / (2 * (~positive).sum()))


class Sums(NamedTuple):
    """Over a set of rows: the sum of [x, 1][x, 1]^T and of [x, 1]. A path from zero starts with every row a margin
    violator, so its first Gram matrix is the two classes' sums, weighted: a caller fitting many subsets of one
    training set (validation splits) computes the set's sums once and subtracts each held-out part's."""

    gram: np.ndarray  # (d + 1, d + 1)
    total: np.ndarray  # (d + 1,)

    @classmethod
    def of(cls, x: np.ndarray) -> Sums:
        xa = augment(x)
        return cls(xa.T @ xa, xa.sum(axis=0))

    def __sub__(self, other: Sums) -> Sums:
        return Sums(self.gram - other.gram, self.total - other.total)

    def __add__(self, other: Sums) -> Sums:
        return Sums(self.gram + other.gram, self.total + other.total)


def augment(x: np.ndarray) -> np.ndarray:
    """[x, 1]: the bias is a weight on a constant feature, regularised like liblinear's (intercept_scaling 1)."""
    return np.hstack([x, np.ones((len(x), 1))])


def svm_path(x: np.ndarray, y: np.ndarray, cs: Sequence[float], start: np.ndarray | None = None,
             sums: tuple[Sums, Sums] | None = None) -> np.ndarray:
    """Weights [w, bias] of the balanced squared-hinge SVM for each C in `cs` (ascending), shape (len(cs), d + 1).

    `x` is (n, d), `y` holds -1 / +1 and both classes. `start` (the solution at a smaller C) continues a path;
    without it, `sums` (`Sums.of` the +1 rows, of the -1 rows) saves building the first Gram matrix."""
    if list(cs) != sorted(cs):
        raise ValueError("the C path must be ascending: each C starts from the previous one's solution")
    xa = augment(x)
    problem = _Problem(xa, y.astype(float), balanced_weights(y))
    if start is None and sums is not None:
        problem.every_row_violates(*sums)
    w = np.zeros(xa.shape[1]) if start is None else start
    path = []
    for c in cs:
        w = problem.minimise(float(c), w)
        path.append(w)
    return np.array(path)


def decision(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Decision values x.w + b for one weight vector (d + 1,) -> (n,), or a path (k, d + 1) -> (n, k)."""
    return x @ weights[..., :-1].T + weights[..., -1]


class _Problem:
    """One training set; keeps the Gram matrix of the current margin violators between Newton steps and C values."""

    def __init__(self, xa: np.ndarray, y: np.ndarray, c: np.ndarray):
        self.xa, self.y, self.c = xa, y, c
        self.in_gram = np.zeros(len(y), bool)
        self.gram = np.zeros((xa.shape[1], xa.shape[1]))
        self.rhs = np.zeros(xa.shape[1])  # sum over violators of c_i y_i x_i

    def every_row_violates(self, positive: Sums, negative: Sums) -> None:
        """Set `gram`/`rhs` to those of all rows from the classes' sums (c_i is one value per class)."""
        c_positive, c_negative = self.c[self.y > 0][0], self.c[self.y < 0][0]
        self.gram = c_positive * positive.gram + c_negative * negative.gram
        self.rhs = c_positive * positive.total - c_negative * negative.total
        self.in_gram = np.ones(len(self.y), bool)

    def minimise(self, big_c: float, w: np.ndarray) -> np.ndarray:
        out = self.xa @ w
        for _ in range(MAX_NEWTON_STEPS):
            violators = self.y * out < 1
            self._track(violators)
            hessian = 2 * big_c * self.gram
            hessian.flat[::len(w) + 1] += 1  # I + 2C G, positive definite
            # numpy's Cholesky releases the GIL, so the fits on a thread pool factor side by side (scipy's holds it)
            target = cho_solve((np.linalg.cholesky(hessian), True), 2 * big_c * self.rhs, check_finite=False)
            direction = target - w
            d_out = self.xa @ direction
            t = self._line_search(big_c, w, direction, out, d_out)
            w, out = w + t * direction, out + t * d_out
            if np.array_equal(self.y * out < 1, violators) and np.isclose(t, 1.0):
                break  # the quadratic of this violator set is minimised at a point that keeps the set: optimal
        return w

    def _track(self, violators: np.ndarray) -> None:
        """Make `gram`/`rhs` those of `violators`: update by the rows that changed, or rebuild when most did."""
        added, removed = violators & ~self.in_gram, ~violators & self.in_gram
        if added.sum() + removed.sum() > violators.sum():
            self.gram, self.rhs = self._sums(violators)
        else:
            for rows, sign in ((added, 1.0), (removed, -1.0)):
                if rows.any():
                    gram, rhs = self._sums(rows)
                    self.gram += sign * gram
                    self.rhs += sign * rhs
        self.in_gram = violators

    def _sums(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, c = self.xa[rows], self.c[rows]
        scaled = x * np.sqrt(c)[:, None]
        return scaled.T @ scaled, x.T @ (c * self.y[rows])  # A.T @ A: numpy computes half of it (syrk)

    def _line_search(self, big_c: float, w: np.ndarray, d: np.ndarray, out: np.ndarray, d_out: np.ndarray) -> float:
        """The exact minimiser t >= 0 of f(w + t d). Along the line each residual r_i(t) = r0_i - t a_i counts while
        positive, so f' is piecewise linear and increasing; walk the points where a residual changes sign."""
        r0, a, c2 = 1 - self.y * out, self.y * d_out, 2 * big_c * self.c
        counting = r0 > 0
        slope0 = w @ d - np.sum((c2 * a * r0)[counting])  # f'(t) = slope + t * curvature on each piece
        curvature0 = d @ d + np.sum((c2 * a * a)[counting])
        changes = (counting & (a > 0)) | (~counting & (a < 0))  # residuals that will stop / start counting
        at = r0[changes] / a[changes]
        order = np.argsort(at, kind="stable")
        at = at[order]
        sign = np.where(counting[changes], -1.0, 1.0)[order]
        slope = slope0 + np.concatenate([[0.0], np.cumsum(-sign * (c2 * a * r0)[changes][order])])
        curvature = curvature0 + np.concatenate([[0.0], np.cumsum(sign * (c2 * a * a)[changes][order])])
        ends = np.append(at, np.inf)
        piece = int(np.argmax(slope + curvature * ends >= 0))  # the first piece on which f' reaches 0
        return float(max(-slope[piece] / curvature[piece], 0.0))
