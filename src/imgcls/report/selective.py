"""Selective classification: how accurate the model is on the images it is sure of, and which
``predict --min-confidence`` keeps a target accuracy.

Keeping the images whose top-1 confidence is at least P gives a *coverage* (the share kept) and
an *accuracy* on those kept; the accuracy-coverage curve (Geifman and El-Yaniv, 2017) traces
both over every P the split offers. Images with equal confidence are kept or dropped together,
as ``--min-confidence`` would, so the curve has one point per distinct confidence. The
confidence for a target accuracy is the lowest P whose kept images reach it: the most images
answered at that accuracy on this split. Chosen on the validation images, it is an estimate
for new ones, optimistic by about the noise of a split this size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

TARGETS = (0.9, 0.95, 0.99)


@dataclass
class AccuracyCoverage:
    """One point per distinct confidence, from the most confident down: keeping every image
    with confidence >= ``confidence[i]`` keeps ``kept[i]`` images (``coverage[i]`` of them all)
    at ``accuracy[i]``."""

    confidence: np.ndarray
    kept: np.ndarray
    coverage: np.ndarray
    accuracy: np.ndarray


def accuracy_coverage(confidence: np.ndarray, correct: np.ndarray) -> AccuracyCoverage:
    """The curve of top-1 ``confidence`` (N floats) and ``correct`` (N bools).

    >>> curve = accuracy_coverage(np.array([0.9, 0.8, 0.8, 0.5]), np.array([1, 1, 0, 0]))
    >>> curve.kept.tolist(), curve.accuracy.tolist()
    ([1, 3, 4], [1.0, 0.6666666666666666, 0.5])
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    order = np.argsort(-confidence, kind="stable")
    sorted_conf = confidence[order]
    hits = np.cumsum(correct[order])
    # the last position of each run of equal confidences: ties are kept together
    ends = np.flatnonzero(np.append(sorted_conf[1:] != sorted_conf[:-1], True))
    kept = ends + 1
    n = max(len(confidence), 1)
    return AccuracyCoverage(sorted_conf[ends], kept, kept / n, hits[ends] / kept)


def confidence_for(curve: AccuracyCoverage, target: float) -> dict[str, Any]:
    """The lowest confidence whose kept images reach ``target`` accuracy, with the coverage
    and accuracy it gives; ``min_confidence`` None when no confidence reaches it.

    >>> curve = accuracy_coverage(np.array([0.9, 0.8, 0.8, 0.5]), np.array([1, 1, 0, 0]))
    >>> confidence_for(curve, 0.6)["min_confidence"], confidence_for(curve, 0.6)["kept"]
    (0.8, 3)
    """
    reached = np.flatnonzero(curve.accuracy >= target)
    if not len(reached):
        return {"target_accuracy": target, "min_confidence": None, "coverage": 0.0,
                "accuracy": None, "kept": 0}
    i = reached[-1]  # the most images kept at that accuracy
    return {"target_accuracy": target, "min_confidence": float(curve.confidence[i]),
            "coverage": float(curve.coverage[i]), "accuracy": float(curve.accuracy[i]),
            "kept": int(curve.kept[i])}


def target_rows(curve: AccuracyCoverage, targets: Sequence[float] = TARGETS) -> list[dict]:
    """:func:`confidence_for` of each target accuracy."""
    return [confidence_for(curve, t) for t in targets]


def curve_rows(curve: AccuracyCoverage) -> list[dict[str, float | int]]:
    return [{"min_confidence": float(c), "kept": int(k), "coverage": float(v),
             "accuracy": float(a)} for c, k, v, a in zip(
                 curve.confidence, curve.kept, curve.coverage, curve.accuracy, strict=True)]
