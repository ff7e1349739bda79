"""Statistics over an evaluation's per-image predictions (one row per fold and test image).

`predictions` frames have columns `fold`, `image_id`, `lesion_id`, `label` and `score` (the melanoma/positive
decision value) and, for the 3-class design, `score_<class>` columns holding every class's decision value.

The bootstrap resamples LESIONS (a cluster bootstrap), not rows or images: images of one lesion are near copies,
so resampling them one by one would count each lesion as several independent cases and give intervals that are
too narrow. One draw of lesions (with replacement) weights each of their images' rows in every fold, and the
statistic is the mean over folds of the weighted fold AUC, so the interval brackets the headline figure (the mean
fold AUC) and respects that 5x2 tests every image five times. Without a `lesion_id` column every image is its
own lesion. Weighted AUCs are computed in integer arithmetic from one sort per fold for a chunk of draws at once.

Paired tests (`paired_comparison`) give the bootstrap beside a test that counts the variance of training too, which
the bootstrap cannot see (it holds each fold's trained SVM fixed): Alpaydin's 5x2cv F-test on the ten folds of a
5x2 split, the corrected resampled t-test of Nadeau and Bengio elsewhere. A verdict takes the larger p.
A bootstrap p-value is known only to its resolution: when none of B draws crosses zero it is below 2/B, and it
is carried and printed as that bound (`PValue`, `format_p`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Iterator

import numpy as np
import pandas as pd
from scipy.stats import f as f_distribution, t as t_distribution

from protocols.errors import ProtocolError

N_BOOT = 1000  # draws behind an evaluation's AUC interval
TEST_DRAWS = 10_000  # draws behind a paired test: "< 2/B" must survive Holm over a report's tests
DRAW_CHUNK = 500  # draws computed at once: chunk x images int32 stays a few MB
FIVE_BY_TWO = tuple(f"r{rep}f{fold}" for rep in range(5) for fold in range(2))
REFERRAL_FRACTIONS = (0.1, 0.2, 0.3, 0.5)
REFERRAL_TARGETS = (0.9, 0.95)
DIFFICULTY_ORDER = ("low", "medium", "high")


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float


@dataclass(frozen=True)
class PValue:
    """A p-value, or (`bound`) the value it is known to lie below: a bootstrap whose draws never crossed zero."""

    value: float
    bound: bool = False

    def __str__(self) -> str:
        return format_p(self)


@dataclass(frozen=True)
class Comparison:
    """Paired cluster bootstrap of mean-AUC(a) - mean-AUC(b) on the same folds and test images, beside the test
    that counts training variance: 5x2cv F on a 5x2 split, the corrected resampled t on other folds, none on one."""

    difference: Interval
    p_value: float  # two-sided, from the bootstrap distribution of the difference; 0 where no draw crossed zero
    folds: int
    n_boot: int
    test: str = ""  # "5x2cv F", "corrected t", or "" (one fold: training variance is not measured)
    statistic: float = math.nan
    test_p_value: float = math.nan

    @property
    def bootstrap_p(self) -> PValue:
        resolution = 2 / self.n_boot  # the smallest two-sided p that B draws can show
        return PValue(resolution, bound=True) if self.p_value < resolution else PValue(self.p_value)

    @property
    def verdict_p(self) -> PValue:
        """The larger of the two tests' p (NaN where only the bootstrap applies: one fold decides nothing)."""
        boot = self.bootstrap_p
        if math.isnan(self.test_p_value):
            return PValue(math.nan)
        return boot if boot.value >= self.test_p_value else PValue(self.test_p_value)


def format_p(p: PValue) -> str:
    """"0.042", "0.0031", "< 0.002" for a bound, "1.000" for a bound at the cap, "–" where no test applies."""
    if math.isnan(p.value):
        return "–"
    if p.value >= 1:
        return "1.000"
    text = f"{p.value:.3f}" if p.value >= 0.01 else f"{p.value:.2g}"
    return f"< {text}" if p.bound else text


def mean_sd(values: pd.Series | np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation over folds (sd is NaN for a single fold: there is no spread to show)."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan


def format_mean_sd(mean: float, sd: float) -> str:
    """In %: "84.0 ± 1.2", "84.8" for a single fold, "–" for a metric not measured (e.g. results written before
    bench measured it)."""
    if math.isnan(mean):
        return "–"
    return f"{100 * mean:.1f}" + ("" if math.isnan(sd) else f" ± {100 * sd:.1f}")


def bootstrap_auc(predictions: pd.DataFrame, *, n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95) -> Interval:
    """Mean fold AUC and its cluster-bootstrap confidence interval (test lesions resampled)."""
    estimate = float(np.mean([_fold_auc(f) for _, f in predictions.groupby("fold")]))
    (boot,) = _boot_mean_fold_auc([predictions], n_boot, seed)
    return _interval(estimate, boot, level)


def paired_comparison(a: pd.DataFrame, b: pd.DataFrame, *, n_boot: int = TEST_DRAWS, seed: int = 0,
                      level: float = 0.95, n_train: dict[str, int] | None = None) -> Comparison:
    """Compare two configurations' predictions on identical folds and test images: the lesion bootstrap (the same
    draws for both) and, from the per-fold AUC differences, the 5x2cv F-test or the corrected resampled t-test.

    `n_train`: each fold's number of training images, for the t-test's correction; by default the images tested in
    the other folds but not in this one (folds cut from one set; pass it where training data came from elsewhere)."""
    keys = ["fold", "image_id"]
    a, b = a.sort_values(keys).reset_index(drop=True), b.sort_values(keys).reset_index(drop=True)
    if not a[keys].equals(b[keys]) or not a["label"].equals(b["label"]):
        raise ProtocolError("the two evaluations do not share folds, test images and labels: run both with the "
                            "same --dataset, --protocol, --split and --seed")
    boot_a, boot_b = _boot_mean_fold_auc([a, b], n_boot, seed)
    diff = boot_a - boot_b
    per_fold = {fold: _fold_auc(f) - _fold_auc(b.loc[f.index]) for fold, f in a.groupby("fold")}
    estimate = float(np.mean(list(per_fold.values())))
    p_value = min(1.0, 2 * min(np.mean(diff <= 0), np.mean(diff >= 0)))
    test, statistic, test_p = _training_test(per_fold, a, n_train)
    return Comparison(_interval(estimate, diff, level), float(p_value), len(per_fold), n_boot, test, statistic,
                      test_p)


def _training_test(per_fold: dict[str, float], predictions: pd.DataFrame,
                   n_train: dict[str, int] | None) -> tuple[str, float, float]:
    if set(per_fold) == set(FIVE_BY_TWO):
        return "5x2cv F", *f_test_5x2(per_fold)
    if len(per_fold) < 2:
        return "", math.nan, math.nan
    n_test = predictions.groupby("fold")["image_id"].nunique()
    n_train = n_train or (predictions["image_id"].nunique() - n_test).to_dict()
    if min(n_train[fold] for fold in per_fold) < 1:  # every fold tests the same images: no training part known
        return "", math.nan, math.nan
    ratio = float(np.mean([n_test[fold] / n_train[fold] for fold in per_fold]))
    return "corrected t", *corrected_t_test(list(per_fold.values()), ratio)


def f_test_5x2(differences: dict[str, float]) -> tuple[float, float]:
    """Alpaydin's (1999) combined 5x2cv F-test of per-fold differences keyed `r{rep}f{fold}`: F = sum of the ten
    squared differences over twice the sum of the five within-repetition variances, ~ F(10, 5) under the null.
    (NaN, NaN) unless exactly the ten folds r0f0 ... r4f1 are given; p = 1 where every difference is zero."""
    if set(differences) != set(FIVE_BY_TWO):
        return math.nan, math.nan
    p = np.array([[differences[f"r{rep}f{fold}"] for fold in range(2)] for rep in range(5)])
    variances = ((p - p.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
    if not p.any():
        return 0.0, 1.0
    with np.errstate(divide="ignore"):
        statistic = float((p**2).sum() / (2 * variances.sum()))
    return statistic, float(f_distribution.sf(statistic, 10, 5))


def corrected_t_test(differences: list[float], test_train_ratio: float) -> tuple[float, float]:
    """Nadeau and Bengio's (2003) corrected resampled t-test of J per-fold differences, two-sided: folds cut from
    one set share training images, so their differences are correlated and the naive variance of the mean, s²/J,
    is too small; it becomes (1/J + n_test/n_train) s², and t = mean / sqrt of that ~ t(J - 1) under the null.
    (NaN, NaN) for fewer than two folds; p = 1 where every difference is zero."""
    d = np.asarray(differences, dtype=float)
    if len(d) < 2:
        return math.nan, math.nan
    if not d.any():
        return 0.0, 1.0
    with np.errstate(divide="ignore"):
        statistic = float(d.mean() / math.sqrt((1 / len(d) + test_train_ratio) * d.var(ddof=1)))
    return statistic, float(2 * t_distribution.sf(abs(statistic), len(d) - 1))


def holm(p_values: list[PValue]) -> list[PValue]:
    """Holm's step-down adjustment: the k-th smallest of m p-values times (m - k + 1), kept monotone, capped at 1.
    Rejecting where the adjusted p < alpha keeps the chance of any false claim among the m below alpha. An
    adjusted value is a bound where the p that sets it is one; NaN (no test) stays NaN and is not counted in m."""
    tested = [i for i, p in enumerate(p_values) if not math.isnan(p.value)]
    order = sorted(tested, key=lambda i: p_values[i].value)
    result = [PValue(math.nan)] * len(p_values)
    running = PValue(0.0)
    for k, i in enumerate(order):
        scaled = PValue(min(1.0, (len(order) - k) * p_values[i].value), p_values[i].bound)
        if scaled.value > running.value or (scaled.value == running.value and not scaled.bound):
            running = scaled  # on a tie the exact value wins: max(x, "< x") is x
        result[i] = running
    return result


def auc_by_difficulty(predictions: pd.DataFrame, difficulty: pd.Series) -> pd.DataFrame:
    """Mean fold AUC per difficulty level (the paper's Table 4); `difficulty` is indexed by image_id."""
    level = predictions["image_id"].map(difficulty)
    rows = []
    parts = predictions.assign(difficulty=level).dropna(subset=["difficulty"]).groupby("difficulty", sort=False)
    for name, part in sorted(parts, key=lambda item: _level_order(item[0])):
        aucs = [_fold_auc(f, None) for _, f in part.groupby("fold") if _scorable(f)]
        if aucs:
            rows.append({"difficulty": name, "auc": float(np.mean(aucs)), "images": part["image_id"].nunique(),
                         "folds": len(aucs)})
    return pd.DataFrame(rows, columns=["difficulty", "auc", "images", "folds"])


def referral(predictions: pd.DataFrame, positive: int = 1, fractions: tuple[float, ...] = REFERRAL_FRACTIONS,
             targets: tuple[float, ...] = REFERRAL_TARGETS) -> pd.DataFrame:
    """Sensitivity reached when a fraction of cases is referred to a dermatologist.

    The paper's policy refers the confident positives (score > m) and the low-confidence cases (|score| < m);
    their union is every case scoring above -m, so sweeping the margin m refers cases in order of decreasing
    score. The curve (sensitivity against fraction referred) is averaged over folds; rows give the sensitivity
    at fixed fractions referred (`target` False), then the fraction needed for target sensitivities (True).
    """
    grid = np.linspace(0, 1, 1001)
    curve = np.mean([np.interp(grid, *_referral_curve(f["label"].to_numpy() == positive, f["score"].to_numpy()))
                     for _, f in predictions.groupby("fold")], axis=0)
    rows = [{"referred": fr, "sensitivity": float(np.interp(fr, grid, curve)), "target": False} for fr in fractions]
    rows += [{"referred": float(grid[np.argmax(curve >= t - 1e-12)]), "sensitivity": t, "target": True}
             for t in targets]
    return pd.DataFrame(rows)


def _level_order(level: str) -> tuple[int, str]:
    """low, medium, high first and in that order; any other level after them, alphabetically."""
    return (DIFFICULTY_ORDER.index(level) if level in DIFFICULTY_ORDER else len(DIFFICULTY_ORDER), level)


def _referral_curve(truth: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    referred_positive = truth[np.argsort(-score, kind="stable")]
    fraction = np.arange(len(truth) + 1) / len(truth)
    sensitivity = np.concatenate([[0.0], np.cumsum(referred_positive) / max(truth.sum(), 1)])
    return fraction, sensitivity


def _boot_mean_fold_auc(frames: list[pd.DataFrame], n_boot: int, seed: int) -> list[np.ndarray]:
    """Each frame's mean fold AUC in every draw of the test lesions; the frames hold the same images, and one draw
    weights them alike (a paired comparison)."""
    images = frames[0].drop_duplicates("image_id")
    lesion = images["lesion_id"] if "lesion_id" in images else images["image_id"]
    lesions, members = np.unique(lesion.astype(str).to_numpy(), return_inverse=True)
    column = pd.Series(members, index=images["image_id"].to_numpy())  # image -> its lesion's column in the counts
    folds = [[(fold, column.loc[fold["image_id"]].to_numpy()) for _, fold in frame.groupby("fold")]
             for frame in frames]
    boot = [[] for _ in frames]
    for counts in _lesion_counts(len(lesions), n_boot, seed):
        for result, parts in zip(boot, folds):
            result.append(np.mean([_fold_auc(fold, counts[:, columns]) for fold, columns in parts], axis=0))
    return [np.concatenate(result) for result in boot]


def _lesion_counts(n_lesions: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """(draws, n_lesions) int32: how often each lesion is drawn (with replacement) in each replicate, a chunk of
    draws at a time. One bincount over uniform picks: numpy's multinomial sampler is about 6x slower here."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, DRAW_CHUNK):
        k = min(DRAW_CHUNK, n_boot - start)
        picks = rng.integers(0, n_lesions, size=(k, n_lesions)) + n_lesions * np.arange(k)[:, None]
        yield np.bincount(picks.ravel(), minlength=k * n_lesions).reshape(k, n_lesions).astype(np.int32)


def _fold_auc(fold: pd.DataFrame, weights: np.ndarray | None = None):
    """The fold's AUC (binary, or the mean one-vs-one AUC of the `score_*` columns, each pair ranked by its margin
    difference, as `protocols.metrics.auc`); with integer `weights` (draws, images), one AUC per draw."""
    labels = fold["label"].to_numpy()
    columns = [c for c in fold.columns if c.startswith("score_")]
    w = np.ones((1, len(fold)), np.int32) if weights is None else weights
    if not columns:
        result = _weighted_auc(fold["score"].to_numpy(), labels == 1, w)
    else:
        scores = fold[columns].to_numpy()
        pairs = []
        for i, j in combinations(range(len(columns)), 2):
            both = (labels == i) | (labels == j)
            pairs.append(_weighted_auc(scores[both, i] - scores[both, j], labels[both] == i, w[:, both]))
        result = np.mean(pairs, axis=0)
    return float(result[0]) if weights is None else result


def _weighted_auc(score: np.ndarray, truth: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC of `score` for each row of integer `weights` (B, n): the weighted Mann-Whitney statistic, ties
    counted half. Each positive is credited with the weight of the negatives below it, read off a cumulative sum
    over the sorted negatives; integers keep the sums exact (sklearn's weighted roc_auc_score agrees, see the
    tests)."""
    negatives = np.flatnonzero(~truth)
    negatives = negatives[np.argsort(score[negatives], kind="stable")]
    below = np.zeros((len(weights), len(negatives) + 1), np.int64)
    np.cumsum(weights[:, negatives], axis=1, out=below[:, 1:])
    positives = np.flatnonzero(truth)
    neg_score, pos_score, pos_weight = score[negatives], score[positives], weights[:, positives]
    strictly, tied = np.searchsorted(neg_score, pos_score, "left"), np.searchsorted(neg_score, pos_score, "right")
    twice = (pos_weight * (below[:, strictly] + below[:, tied])).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return twice / (2 * pos_weight.sum(axis=1) * below[:, -1])


def _scorable(fold: pd.DataFrame) -> bool:
    columns = [c for c in fold.columns if c.startswith("score_")]
    return fold["label"].nunique() == max(len(columns), 2)


def _interval(estimate: float, boot: np.ndarray, level: float) -> Interval:
    boot = boot[np.isfinite(boot)]
    tail = (1 - level) / 2 * 100
    return Interval(estimate, float(np.percentile(boot, tail)), float(np.percentile(boot, 100 - tail)))

