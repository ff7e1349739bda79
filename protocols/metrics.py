"""The ISIC 2016 challenge metrics, defined as the challenge (not the reference implementation) defines them.

Binary designs: `scores` are the SVM decision values of class 1. AUC and mAP (average precision) rank them;
ACC, SE = TP/(TP+FN) and SP = TN/(TN+FP) use the SVM's own threshold, 0.

3-class design: `scores` are the one-vs-rest decision values, one column per class. AUC is the mean of the
one-vs-one AUCs (Hand & Till 2001), as the paper states, via `roc_auc_score(multi_class="ovo")`. That needs
probability-like rows summing to 1, so the decision values go through a softmax first (the multinomial-logistic
link; monotone in each class's own decision value). mAP, ACC, SE and SP are melanoma-vs-rest on the melanoma
column at threshold 0, so they read the same as in the binary designs.
"""

from __future__ import annotations

import numpy as np
from scipy.special import softmax
from sklearn.metrics import average_precision_score, roc_auc_score

from protocols.errors import ProtocolError

METRICS = ("auc", "map", "acc", "se", "sp")


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Binary ROC AUC of 1-D scores, or the mean one-vs-one AUC of (n, k) decision values."""
    present = np.unique(labels)
    if scores.ndim == 1:
        if len(present) < 2:
            raise ProtocolError("a test set with a single class has no AUC; use more images or another split")
        return float(roc_auc_score(labels, scores))
    if len(present) < scores.shape[1]:
        raise ProtocolError(f"the one-vs-one AUC needs every class in the test set; it has only {present.tolist()}")
    return float(roc_auc_score(labels, softmax(scores, axis=1), multi_class="ovo", labels=range(scores.shape[1])))


def positive_scores(scores: np.ndarray, positive: int = 1) -> np.ndarray:
    """The decision values of the positive class: the column `positive` of a 3-class score matrix."""
    return scores if scores.ndim == 1 else scores[:, positive]


def fold_metrics(labels: np.ndarray, scores: np.ndarray, positive: int = 1) -> dict[str, float]:
    """AUC, mAP, ACC, SE, SP of one test fold (positive = the melanoma class for mAP/ACC/SE/SP)."""
    truth = labels == positive
    predicted = positive_scores(scores, positive) > 0
    tp, fn = int(np.sum(truth & predicted)), int(np.sum(truth & ~predicted))
    tn, fp = int(np.sum(~truth & ~predicted)), int(np.sum(~truth & predicted))
    return {
        "auc": auc(labels, scores),
        "map": float(average_precision_score(truth, positive_scores(scores, positive))),
        "acc": (tp + tn) / len(labels),
        "se": tp / (tp + fn),
        "sp": tn / (tn + fp),
    }
