"""Statistics over an evaluation's per-image predictions (one row per fold and test image).

`predictions` frames have columns `fold`, `image_id`, `label` and `score` (the melanoma/positive decision value)
and, for the 3-class design, `score_<class>` columns holding every class's decision value.

The bootstrap resamples test IMAGES, not rows: one draw of images (with replacement) weights each image's rows
in every fold, and the statistic is the mean over folds of the weighted fold AUC, so the interval brackets the
headline figure (the mean fold AUC) and respects that 5x2 tests every image five times. Weighted AUCs are
computed from one sort per fold for all draws at once (1000 draws over ten folds of 5000 images: about a second).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd
from scipy.special import softmax

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
    """Paired bootstrap of mean-AUC(a) - mean-AUC(b) on the same folds and test images."""

    difference: Interval
    p_value: float  # two-sided, from the bootstrap distribution of the difference
    folds: int


def mean_sd(values: pd.Series | np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation over folds (sd is NaN for a single fold: there is no spread to show)."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan


def format_mean_sd(mean: float, sd: float) -> str:
    """In %: "84.0 ± 1.2", or "84.8" for a single fold."""
    return f"{100 * mean:.1f}" + ("" if math.isnan(sd) else f" ± {100 * sd:.1f}")


def bootstrap_auc(predictions: pd.DataFrame, *, n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95) -> Interval:
    """Mean fold AUC and its bootstrap confidence interval (test images resampled)."""
    draws = _image_draws(predictions["image_id"], n_boot, seed)
    estimate = float(np.mean([_fold_auc(f, None) for _, f in predictions.groupby("fold")]))
    boot = _mean_fold_auc(predictions, draws)
    return _interval(estimate, boot, level)


def paired_comparison(a: pd.DataFrame, b: pd.DataFrame, *, n_boot: int = N_BOOT, seed: int = 0,
                      level: float = 0.95) -> Comparison:
    """Compare two backbones' predictions on identical folds and test images (same draws for both)."""
    keys = ["fold", "image_id"]
    a, b = a.sort_values(keys).reset_index(drop=True), b.sort_values(keys).reset_index(drop=True)
    if not a[keys].equals(b[keys]) or not a["label"].equals(b["label"]):
        raise ProtocolError("the two evaluations do not share folds, test images and labels: run both with the "
                            "same --dataset, --protocol, --split and --seed")
    draws = _image_draws(a["image_id"], n_boot, seed)
    diff = _mean_fold_auc(a, draws) - _mean_fold_auc(b, draws)
    estimate = float(np.mean([_fold_auc(f, None) for _, f in a.groupby("fold")])
                     - np.mean([_fold_auc(f, None) for _, f in b.groupby("fold")]))
    p_value = min(1.0, 2 * min(np.mean(diff <= 0), np.mean(diff >= 0)))
    return Comparison(_interval(estimate, diff, level), float(p_value), a["fold"].nunique())


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


def _image_draws(image_ids: pd.Series, n_boot: int, seed: int) -> pd.DataFrame:
    """(n_images, n_boot) multinomial counts: how often each distinct test image is drawn in each replicate."""
    images = pd.Index(image_ids.unique())
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(images), np.full(len(images), 1 / len(images)), size=n_boot)
    return pd.DataFrame(counts.T.astype(np.float32), index=images)


def _mean_fold_auc(predictions: pd.DataFrame, draws: pd.DataFrame, chunk: int = 250) -> np.ndarray:
    """Mean fold AUC for every draw; draws go in chunks so the weight matrices stay a few MB."""
    per_fold = []
    for _, fold in predictions.groupby("fold"):
        weights = draws.loc[fold["image_id"]].to_numpy().T
        per_fold.append(np.concatenate([_fold_auc(fold, weights[i:i + chunk])
                                        for i in range(0, len(weights), chunk)]))
    return np.mean(per_fold, axis=0)


def _fold_auc(fold: pd.DataFrame, weights: np.ndarray | None):
    """The fold's AUC (binary, or mean one-vs-one over softmaxed `score_*` columns), weighted per bootstrap draw."""
    labels = fold["label"].to_numpy()
    columns = [c for c in fold.columns if c.startswith("score_")]
    w = np.ones((1, len(fold))) if weights is None else weights
    if not columns:
        result = _weighted_auc(fold["score"].to_numpy(), labels == 1, w)
    else:
        probability = softmax(fold[columns].to_numpy(), axis=1)
        pairs = []
        for i, j in combinations(range(len(columns)), 2):
            both = (labels == i) | (labels == j)
            pairs.append((_weighted_auc(probability[both, i], labels[both] == i, w[:, both])
                          + _weighted_auc(probability[both, j], labels[both] == j, w[:, both])) / 2)
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


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of p-values tested together (controls the family-wise error rate)."""
    order = np.argsort(p_values)
    adjusted, running = np.empty(len(p_values)), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted.tolist()
