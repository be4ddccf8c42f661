"""Calibration: does a 0.9 confidence come true nine times in ten?

The expected calibration error is the standard one (Guo et al., 2017): the top-1 confidences
are put in ``bins`` equal-width bins over (0, 1] (bin m holds ((m-1)/M, m/M]), and
``ECE = sum_m |B_m| / n * |accuracy(B_m) - mean confidence(B_m)|``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BINS = 15


@dataclass
class Calibration:
    ece: float
    lower: np.ndarray  # each bin's (lower, upper] edges
    upper: np.ndarray
    count: np.ndarray  # images per bin
    accuracy: np.ndarray  # fraction correct per bin (0 for an empty bin)
    confidence: np.ndarray  # mean confidence per bin (0 for an empty bin)

    def rows(self) -> list[dict[str, float | int]]:
        return [{"bin_lower": float(lo), "bin_upper": float(hi), "count": int(n),
                 "accuracy": float(a), "mean_confidence": float(c)}
                for lo, hi, n, a, c in zip(self.lower, self.upper, self.count, self.accuracy,
                                           self.confidence, strict=True)]


def calibration(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> Calibration:
    """The reliability table and ECE of top-1 ``confidence`` (N floats) and ``correct`` (N bools).

    >>> round(calibration(np.array([0.9, 0.9, 0.6, 0.6]), np.array([1, 1, 1, 0])).ece, 3)
    0.1
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # bin m holds (edges[m], edges[m + 1]]: right-closed, so a confidence of 1.0 is in the last
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    safe = np.maximum(count, 1)
    accuracy = np.bincount(which, weights=correct, minlength=bins) / safe
    mean_conf = np.bincount(which, weights=confidence, minlength=bins) / safe
    n = max(len(confidence), 1)
    ece = float(np.sum(count / n * np.abs(accuracy - mean_conf)))
    return Calibration(ece, edges[:-1], edges[1:], count, accuracy, mean_conf)
