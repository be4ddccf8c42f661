"""Multi-label metrics: per-class average precision, F1-optimal thresholds, and the scores of
thresholded predictions.

The multi-label sibling of ``metrics.py``: each of the K classes is its own binary problem on
[N, K] probabilities and 0/1 targets. Everything runs in float64 on the CPU and comes back as
plain Python numbers (JSON-serialisable), following scikit-learn's conventions
(``zero_division=0``, one precision/recall point per distinct score) so the numbers can be
checked against it; scikit-learn itself is not needed at runtime.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from imgcls.engine.metrics import _safe_div


def _as_pair(scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores float64, targets bool), both [N, K] on the CPU; targets are 0/1 of any dtype."""
    if scores.dim() != 2 or scores.shape != targets.shape:
        raise ValueError(
            f"scores and targets must both be [N, K], got {tuple(scores.shape)} "
            f"and {tuple(targets.shape)}"
        )
    s = scores.detach().to(device="cpu", dtype=torch.float64)
    y = targets.detach().to(device="cpu", dtype=torch.float64) > 0.5
    return s, y


def _ranked(
    s: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every column sorted by descending score, with the running true-positive count, the number
    predicted positive, and a mask of the last row of each group of tied scores: the cuts
    ``score >= s`` can only fall there (scikit-learn's one point per distinct score)."""
    s_sorted, order = torch.sort(s, dim=0, descending=True, stable=True)
    tp = torch.cumsum(torch.gather(y, 0, order).to(torch.float64), dim=0)
    predicted = torch.arange(1, s.shape[0] + 1, dtype=torch.float64).unsqueeze(1)
    last = torch.ones_like(s_sorted, dtype=torch.bool)
    last[:-1] = s_sorted[:-1] != s_sorted[1:]
    return s_sorted, tp, predicted, last


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-class average precision [K] (float64), as scikit-learn's ``average_precision_score``:
    the sum over distinct scores of (recall gained) x (precision there), no interpolation.

    A class with no positive gets NaN: its AP is undefined, and NaN keeps it from being
    silently averaged in as 0 or 1 (``multilabel_metrics`` leaves it out of the mAP).

    >>> average_precision(torch.tensor([[0.9], [0.2], [0.6]]), torch.tensor([[1], [0], [1]]))
    tensor([1.], dtype=torch.float64)
    """
    s, y = _as_pair(scores, targets)
    if s.shape[0] == 0:
        return torch.full((s.shape[1],), float("nan"), dtype=torch.float64)
    _, tp, predicted, last = _ranked(s, y)
    positives = tp[-1]
    # tp is non-decreasing, so the count at the previous cut is a running max over earlier cuts.
    tp_at_cuts = torch.where(last, tp, 0.0)
    before = torch.cummax(torch.cat([torch.zeros_like(tp[:1]), tp_at_cuts[:-1]]), dim=0).values
    gained = torch.where(last, tp - before, 0.0)
    ap = (gained * tp / predicted).sum(dim=0) / positives.clamp(min=1)
    return torch.where(positives > 0, ap, float("nan"))


def best_thresholds(
    probs: torch.Tensor, targets: torch.Tensor, default: float = 0.5
) -> torch.Tensor:
    """Per-class decision threshold [K] (float64) maximising F1 for ``prob >= threshold``.

    The threshold sits halfway between the lowest score kept positive at the best cut and the
    next lower distinct score (0 below the lowest), so it does not rest on a validation sample
    and small score shifts on new data do not flip it; ties in F1 keep the higher threshold
    (fewer positives). Clamped to (0, 1]. A class with no positive gets ``default``.

    >>> best_thresholds(torch.tensor([[0.9], [0.3], [0.6]]), torch.tensor([[1], [0], [1]]))
    tensor([0.4500], dtype=torch.float64)
    """
    s, y = _as_pair(probs, targets)
    n, k = s.shape
    if n == 0:
        return torch.full((k,), float(default), dtype=torch.float64)
    s_sorted, tp, predicted, last = _ranked(s, y)
    positives = tp[-1]
    f1 = torch.where(last, 2 * tp / (predicted + positives), -1.0)
    best = torch.argmax(f1, dim=0)  # the first maximum: the highest threshold among ties
    lowest_kept = s_sorted[best, torch.arange(k)]
    below = torch.cat([s_sorted[1:], torch.zeros_like(s_sorted[:1])])[best, torch.arange(k)]
    # best is the last row of its tie group, so `below` is the next lower distinct score.
    tiny = torch.finfo(torch.float64).tiny
    threshold = ((lowest_kept + below.clamp(max=lowest_kept)) / 2).clamp(min=tiny, max=1.0)
    return torch.where(positives > 0, threshold, float(default))


def _thresholds_for(thresholds: torch.Tensor | Sequence[float] | float, k: int) -> torch.Tensor:
    """The thresholds as a float64 [K] tensor: one value for every class, or one per class."""
    t = torch.as_tensor(thresholds, dtype=torch.float64).detach().cpu()
    if t.dim() == 0:
        return t.expand(k).clone()
    if t.shape != (k,):
        raise ValueError(f"expected one threshold or {k}, got shape {tuple(t.shape)}")
    return t


def _counts(y: torch.Tensor, pred: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-class true positives, false positives and false negatives (float64 [K])."""
    return tuple(
        (a & b).sum(dim=0).to(torch.float64) for a, b in [(y, pred), (~y, pred), (y, ~pred)]
    )


def _mean(values: torch.Tensor) -> float:
    return float(values.mean()) if values.numel() > 0 else 0.0


def multilabel_metrics(
    probs: torch.Tensor,
    targets: torch.Tensor,
    thresholds: torch.Tensor | Sequence[float] | float = 0.5,
    classes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """mAP, micro/macro P/R/F1, subset accuracy, Hamming loss and per-class scores.

    ``probs`` and ``targets`` are [N, K]; a label is predicted when ``prob >= threshold`` (one
    threshold, or one per class). The scores match scikit-learn's on the indicator matrices with
    ``zero_division=0``; macro averages run over all K classes, while ``map`` averages AP only
    over classes with at least one positive (the others have no defined AP: ``"ap": None``).
    """
    s, y = _as_pair(probs, targets)
    k = s.shape[1]
    if classes is not None and len(classes) != k:
        raise ValueError(f"got {len(classes)} class names for {k} classes")
    names = [str(c) for c in classes] if classes is not None else [str(i) for i in range(k)]
    t = _thresholds_for(thresholds, k)

    pred = s >= t
    yf, pf = y.to(torch.float64), pred.to(torch.float64)
    tp, fp, fn = _counts(y, pred)
    support = yf.sum(dim=0)
    precision, recall = _safe_div(tp, tp + fp), _safe_div(tp, tp + fn)
    f1 = _safe_div(2 * tp, 2 * tp + fp + fn)  # scikit-learn's form: no P + R == 0 special case
    ap = average_precision(s, yf)
    has_positive = support > 0
    tp_all, fp_all, fn_all = tp.sum(), fp.sum(), fn.sum()

    per_class = {
        name: {
            "ap": float(ap[i]) if bool(has_positive[i]) else None,
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "threshold": float(t[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(names)
    }
    return {
        "map": _mean(ap[has_positive]),
        "classes_without_positives": int((~has_positive).sum()),
        "micro_precision": float(_safe_div(tp_all, tp_all + fp_all)),
        "micro_recall": float(_safe_div(tp_all, tp_all + fn_all)),
        "micro_f1": float(_safe_div(2 * tp_all, 2 * tp_all + fp_all + fn_all)),
        "macro_precision": _mean(precision),
        "macro_recall": _mean(recall),
        "macro_f1": _mean(f1),
        "subset_accuracy": _mean((pred == y).all(dim=1).to(torch.float64)) if k else 0.0,
        "hamming_loss": _mean((pred != y).to(torch.float64)),
        "label_cardinality": _mean(yf.sum(dim=1)),
        "predicted_cardinality": _mean(pf.sum(dim=1)),
        "per_class": per_class,
    }


def multilabel_epoch_metrics(loss: float, probs: torch.Tensor, targets: torch.Tensor,
                             thresholds: torch.Tensor | Sequence[float] | float | None
                             ) -> dict[str, float]:
    """The scalar validation metrics of a multi-label epoch, keyed as metrics.jsonl names them
    (each needs its entry in metric_table.METRICS): ``val_acc`` is the exact-match accuracy."""
    m = multilabel_metrics(probs, targets, 0.5 if thresholds is None else thresholds)
    return {
        "val_loss": float(loss),
        "val_acc": m["subset_accuracy"],
        "val_map": m["map"],
        "val_macro_f1": m["macro_f1"],
        "val_micro_f1": m["micro_f1"],
        "val_hamming_loss": m["hamming_loss"],
        "val_macro_precision": m["macro_precision"],
        "val_macro_recall": m["macro_recall"],
    }
