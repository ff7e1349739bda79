"""The ISIC 2016 challenge metrics, defined as the challenge (not the reference implementation) defines them.

Binary designs: `scores` are the SVM decision values of class 1. AUC and mAP (average precision) rank them;
the predicted class is the SVM's own decision, score > 0.

3-class design: `scores` are the one-vs-rest decision values, one column per class. AUC is the mean of the
one-vs-one AUCs (Hand & Till 2001), as the paper states, each pair i, j ranked by the margin difference
s_i - s_j: scale-free, and the same ranking for "i rather than j" and "j rather than i". The predicted class is
the highest score (argmax).

ACC is the share of test images whose predicted class is right; SE = TP/(TP+FN) and SP = TN/(TN+FP) take
melanoma as the positive and every other class as the negative; BACC is the mean recall over the classes;
mAP ranks the melanoma score.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
from sklearn.metrics import average_precision_score, balanced_accuracy_score, roc_auc_score

from protocols.errors import ProtocolError

METRICS = ("auc", "map", "acc", "se", "sp", "bacc")
METRIC_TITLES = {"auc": "AUC", "map": "mAP", "acc": "ACC", "se": "SE", "sp": "SP", "bacc": "BACC"}


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Binary ROC AUC of 1-D scores, or the mean one-vs-one AUC of (n, k) one-vs-rest decision values."""
    present = np.unique(labels)
    if scores.ndim == 1:
        if len(present) < 2:
            raise ProtocolError("a test set with a single class has no AUC; use more images or another split")
        return float(roc_auc_score(labels, scores))
    if len(present) < scores.shape[1]:
        raise ProtocolError(f"the one-vs-one AUC needs every class in the test set; it has only {present.tolist()}")
    return float(np.mean([roc_auc_score(labels[pair] == i, scores[pair, i] - scores[pair, j])
                          for i, j in combinations(range(scores.shape[1]), 2)
                          if (pair := (labels == i) | (labels == j)).any()]))


def positive_scores(scores: np.ndarray, positive: int = 1) -> np.ndarray:
    """The decision values of the positive class: the column `positive` of a 3-class score matrix."""
    return scores if scores.ndim == 1 else scores[:, positive]


def predicted_class(scores: np.ndarray) -> np.ndarray:
    """The SVM's decision: class 1 where the binary score is above 0, else the class of the highest score."""
    return (scores > 0).astype(int) if scores.ndim == 1 else np.argmax(scores, axis=1)


def fold_metrics(labels: np.ndarray, scores: np.ndarray, positive: int = 1) -> dict[str, float]:
    """AUC, mAP, ACC, SE, SP, BACC of one test fold (positive = the melanoma class for mAP, SE and SP)."""
    predicted = predicted_class(scores)
    truth, called = labels == positive, predicted == positive
    return {
        "auc": auc(labels, scores),
        "map": float(average_precision_score(truth, positive_scores(scores, positive))),
        "acc": float(np.mean(predicted == labels)),
        "se": float(np.sum(truth & called) / np.sum(truth)),
        "sp": float(np.sum(~truth & ~called) / np.sum(~truth)),
        "bacc": float(balanced_accuracy_score(labels, predicted)),
    }
