"""The numbers of a multi-label run's page that :mod:`imgcls.engine.multilabel_metrics` does not
give: precision-recall curves, label co-occurrence, the worst misses and calibration per class.
Plain numpy on [N, K] probabilities (each class's sigmoid) and 0/1 targets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from imgcls.report.calibration import Calibration, calibration

MAX_POINTS = 1000  # per precision-recall curve drawn and written: a page, not a database


@dataclass
class PRCurve:
    """One class's precision and recall at every distinct score as the cut (``score >=
    threshold``), from the highest score down; the first point is (recall 0, precision 1)."""

    recall: np.ndarray
    precision: np.ndarray
    threshold: np.ndarray  # the cut of each point (inf for the first: nothing predicted)

    def thinned(self, most: int = MAX_POINTS) -> PRCurve:
        """At most ``most`` points, evenly spaced along the curve, both ends kept."""
        if len(self.recall) <= most:
            return self
        keep = np.unique(np.linspace(0, len(self.recall) - 1, most).round().astype(np.int64))
        return PRCurve(self.recall[keep], self.precision[keep], self.threshold[keep])


def pr_curve(probs: np.ndarray, targets: np.ndarray) -> PRCurve | None:
    """Scikit-learn's ``precision_recall_curve`` in recall order, or None for a class without
    a positive (its recall is undefined). Its average precision is
    ``sum((recall[i] - recall[i-1]) * precision[i])``, as ``average_precision`` computes it.

    >>> c = pr_curve(np.array([0.9, 0.2, 0.6]), np.array([1, 0, 1]))
    >>> c.recall.tolist(), c.precision.tolist()
    ([0.0, 0.5, 1.0, 1.0], [1.0, 1.0, 1.0, 0.6666666666666666])
    """
    y = np.asarray(targets) > 0
    positives = int(y.sum())
    if positives == 0:
        return None
    order = np.argsort(-np.asarray(probs, dtype=np.float64), kind="stable")
    scores = np.asarray(probs, dtype=np.float64)[order]
    tp = np.cumsum(y[order])
    cuts = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True])  # the last of each tie group
    recall = tp[cuts] / positives
    precision = tp[cuts] / (cuts + 1)
    return PRCurve(np.r_[0.0, recall], np.r_[1.0, precision], np.r_[np.inf, scores[cuts]])


def curve_ap(curve: PRCurve) -> float:
    """The average precision under ``curve`` (unthinned): recall gained times precision."""
    return float(np.sum(np.diff(curve.recall) * curve.precision[1:]))


def cooccurrence(onehot: np.ndarray) -> np.ndarray:
    """Images having both label i and label j, [K, K] int64; the diagonal: images with label i.

    >>> cooccurrence(np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1]])).tolist()
    [[3, 2, 1], [2, 2, 1], [1, 1, 1]]
    """
    y = (np.asarray(onehot) > 0).astype(np.int64)
    return y.T @ y


def top_pairs(true: np.ndarray, predicted: np.ndarray, classes: list[str],
              top: int = 10) -> list[dict]:
    """The label pairs most often together in the true labels, with how often the predictions
    put them together: a model that learned "A goes with B" over-predicts the pair."""
    k = len(classes)
    pairs = [(int(true[i, j]), i, j) for i in range(k) for j in range(i + 1, k)
             if true[i, j] or predicted[i, j]]
    pairs.sort(key=lambda p: (-p[0], -int(predicted[p[1], p[2]]), p[1], p[2]))
    return [{"label_a": classes[i], "label_b": classes[j], "true": n,
             "predicted": int(predicted[i, j])} for n, i, j in pairs[:top]]


def miss_error(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Each image's summed error ``sum_k |y_k - p_k|``: 0 when every probability is certain
    and right, K when every one is certain and wrong."""
    return np.abs(np.asarray(targets, dtype=np.float64) - probs).sum(axis=1)


def worst_misses(probs: np.ndarray, targets: np.ndarray, top: int) -> np.ndarray:
    """The ``top`` images with the largest :func:`miss_error`, largest first (ties: the lower
    index first).

    >>> worst_misses(np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]]),
    ...              np.array([[1, 0], [1, 0], [1, 0]]), 2).tolist()
    [1, 2]
    """
    return np.argsort(-miss_error(probs, targets), kind="stable")[:top]


def label_set(row: np.ndarray, classes: list[str]) -> str:
    """An image's labels as text: the names of the classes on, space-separated, or "(none)"."""
    names = [c for c, on in zip(classes, row, strict=True) if on]
    return " ".join(names) if names else "(none)"


def class_calibrations(probs: np.ndarray, targets: np.ndarray) -> list[Calibration]:
    """Each class's reliability: in each probability bin, the fraction of images that have the
    label against the mean probability (:func:`calibration` with the label as "correct")."""
    return [calibration(probs[:, k], targets[:, k]) for k in range(probs.shape[1])]


def pooled_calibration(probs: np.ndarray, targets: np.ndarray) -> Calibration:
    """The reliability of all N x K label probabilities together."""
    return calibration(np.asarray(probs).ravel(), np.asarray(targets).ravel())


def binary_cross_entropy(probs: np.ndarray, targets: np.ndarray) -> float:
    """The mean binary cross-entropy over images and classes (what ``optim.loss=bce`` trains)."""
    p = np.clip(probs, 1e-12, 1 - 1e-12)
    y = np.asarray(targets, dtype=np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()) if p.size else 0.0
