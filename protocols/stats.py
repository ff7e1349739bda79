"""Statistics over an evaluation's per-image predictions (one row per fold and test image).

`predictions` frames have columns `fold`, `image_id`, `lesion_id`, `label` and `score` (the melanoma/positive
decision value) and, for the 3-class design, `score_<class>` columns holding every class's decision value.

The bootstrap resamples LESIONS (a cluster bootstrap), not rows or images: images of one lesion are near copies,
so resampling them one by one would count each lesion as several independent cases and give intervals that are
too narrow. One draw of lesions (with replacement) weights each of their images' rows in every fold, and the
statistic is the mean over folds of the weighted fold AUC, so the interval brackets the headline figure (the mean
fold AUC) and respects that 5x2 tests every image five times. Without a `lesion_id` column every image is its
own lesion. Weighted AUCs are computed from one sort per fold for all draws at once (1000 draws over ten folds
of 5000 images: about a second).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd
from scipy.stats import f as f_distribution

from protocols.errors import ProtocolError

N_BOOT = 1000
REFERRAL_FRACTIONS = (0.1, 0.2, 0.3, 0.5)
REFERRAL_TARGETS = (0.9, 0.95)
DIFFICULTY_ORDER = ("low", "medium", "high")


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float


@dataclass(frozen=True)
class Comparison:
    """Paired cluster bootstrap of mean-AUC(a) - mean-AUC(b) on the same folds and test images, and Alpaydin's
    5x2cv paired F-test where both evaluations cover all ten folds of a 5x2 split."""

    difference: Interval
    p_value: float  # two-sided, from the bootstrap distribution of the difference
    folds: int
    f_statistic: float = math.nan  # 5x2cv paired F (Alpaydin 1999); NaN unless all ten 5x2 folds are present
    f_p_value: float = math.nan


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
    draws = _lesion_draws(predictions, n_boot, seed)
    estimate = float(np.mean([_fold_auc(f, None) for _, f in predictions.groupby("fold")]))
    boot = _mean_fold_auc(predictions, draws)
    return _interval(estimate, boot, level)


def paired_comparison(a: pd.DataFrame, b: pd.DataFrame, *, n_boot: int = N_BOOT, seed: int = 0,
                      level: float = 0.95) -> Comparison:
    """Compare two backbones' predictions on identical folds and test images (same lesion draws for both)."""
    keys = ["fold", "image_id"]
    a, b = a.sort_values(keys).reset_index(drop=True), b.sort_values(keys).reset_index(drop=True)
    if not a[keys].equals(b[keys]) or not a["label"].equals(b["label"]):
        raise ProtocolError("the two evaluations do not share folds, test images and labels: run both with the "
                            "same --dataset, --protocol, --split and --seed")
    draws = _lesion_draws(a, n_boot, seed)
    diff = _mean_fold_auc(a, draws) - _mean_fold_auc(b, draws)
    per_fold = {fold: _fold_auc(f, None) - _fold_auc(b.loc[f.index], None) for fold, f in a.groupby("fold")}
    estimate = float(np.mean(list(per_fold.values())))
    p_value = min(1.0, 2 * min(np.mean(diff <= 0), np.mean(diff >= 0)))
    f_statistic, f_p = f_test_5x2(per_fold)
    return Comparison(_interval(estimate, diff, level), float(p_value), a["fold"].nunique(), f_statistic, f_p)


def f_test_5x2(differences: dict[str, float]) -> tuple[float, float]:
    """Alpaydin's (1999) combined 5x2cv F-test of per-fold differences keyed `r{rep}f{fold}`: F = sum of the ten
    squared differences over twice the sum of the five within-repetition variances, ~ F(10, 5) under the null.
    (NaN, NaN) unless exactly the ten folds r0f0 ... r4f1 are given."""
    wanted = {f"r{rep}f{fold}" for rep in range(5) for fold in range(2)}
    if set(differences) != wanted:
        return math.nan, math.nan
    p = np.array([[differences[f"r{rep}f{fold}"] for fold in range(2)] for rep in range(5)])
    variances = ((p - p.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
    if variances.sum() == 0:
        return math.nan, math.nan
    statistic = float((p**2).sum() / (2 * variances.sum()))
    return statistic, float(f_distribution.sf(statistic, 10, 5))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment: the k-th smallest of m p-values times (m - k + 1), kept monotone, capped at 1.
    Rejecting where the adjusted p < alpha keeps the chance of any false claim among the m below alpha."""
    order = np.argsort(p_values, kind="stable")
    m = len(p_values)
    adjusted = np.maximum.accumulate([min(1.0, (m - k) * p_values[i]) for k, i in enumerate(order)])
    result = np.empty(m)
    result[order] = adjusted
    return result.tolist()


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


def _lesion_draws(predictions: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    """(n_images, n_boot): how often each distinct test image's lesion is drawn in each replicate."""
    images = predictions.drop_duplicates("image_id")
    lesion = images["lesion_id"] if "lesion_id" in images else images["image_id"]
    lesions, members = np.unique(lesion.astype(str).to_numpy(), return_inverse=True)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(lesions), np.full(len(lesions), 1 / len(lesions)), size=n_boot)
    return pd.DataFrame(counts.T[members].astype(np.float32), index=images["image_id"].to_numpy())


def _mean_fold_auc(predictions: pd.DataFrame, draws: pd.DataFrame, chunk: int = 250) -> np.ndarray:
    """Mean fold AUC for every draw; draws go in chunks so the weight matrices stay a few MB."""
    per_fold = []
    for _, fold in predictions.groupby("fold"):
        weights = draws.loc[fold["image_id"]].to_numpy().T
        per_fold.append(np.concatenate([_fold_auc(fold, weights[i:i + chunk])
                                        for i in range(0, len(weights), chunk)]))
    return np.mean(per_fold, axis=0)


def _fold_auc(fold: pd.DataFrame, weights: np.ndarray | None):
    """The fold's AUC (binary, or the mean one-vs-one AUC of the `score_*` columns, each pair ranked by its margin
    difference, as `protocols.metrics.auc`), weighted per bootstrap draw."""
    labels = fold["label"].to_numpy()
    columns = [c for c in fold.columns if c.startswith("score_")]
    w = np.ones((1, len(fold))) if weights is None else weights
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
    """AUC of `score` for each row of `weights` (B, n): weighted Mann-Whitney statistic, ties counted half."""
    order = np.argsort(score, kind="stable")
    score, truth, weights = score[order], truth[order], weights[:, order]
    pos, neg = weights * truth, weights * ~truth
    starts = np.flatnonzero(np.r_[True, score[1:] != score[:-1]])
    if len(starts) < len(score):  # ties: compare groups of equal scores instead of single images
        pos, neg = np.add.reduceat(pos, starts, axis=1), np.add.reduceat(neg, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    total = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (below + neg / 2)).sum(axis=1) / total


def _scorable(fold: pd.DataFrame) -> bool:
    columns = [c for c in fold.columns if c.startswith("score_")]
    return fold["label"].nunique() == max(len(columns), 2)


def _interval(estimate: float, boot: np.ndarray, level: float) -> Interval:
    boot = boot[np.isfinite(boot)]
    tail = (1 - level) / 2 * 100
    return Interval(estimate, float(np.percentile(boot, tail)), float(np.percentile(boot, 100 - tail)))

