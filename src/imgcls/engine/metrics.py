"""Classification metrics from a confusion matrix, and the metrics a run may monitor.

Everything here works from the K x K confusion matrix rather than from per-sample predictions,
so evaluation only has to accumulate one small integer tensor (cheap to all-reduce across
processes) and every metric is derived from the same counts. Results are plain Python numbers
so they can go straight into JSON logs, checkpoints and reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """Elementwise num / den with 0.0 where den == 0 (scikit-learn's zero_division=0)."""
    nonzero = den > 0
    return torch.where(nonzero, num / torch.where(nonzero, den, torch.ones_like(den)), 0.0)


def classification_metrics(
    confusion: torch.Tensor, classes: Sequence[str] | None = None
) -> dict[str, Any]:
    """Accuracy, macro/weighted/balanced scores and per-class P/R/F1 from a confusion matrix.

    ``confusion[i, j]`` counts samples of true class ``i`` predicted as ``j``. Computed in
    float64 on the CPU so that large counts do not lose precision, and returned as plain
    floats/ints so the result is JSON-serialisable. Zero divisions give 0.0, matching
    scikit-learn with ``zero_division=0``; macro averages run over all K classes, matching
    scikit-learn with ``labels=range(K)``.
    """
    if confusion.dim() != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be a square K x K matrix, got {tuple(confusion.shape)}")
    k = confusion.shape[0]
    if classes is not None and len(classes) != k:
        raise ValueError(f"got {len(classes)} class names for a {k} x {k} confusion matrix")
    names = [str(c) for c in classes] if classes is not None else [str(i) for i in range(k)]

    cm = confusion.detach().to(device="cpu", dtype=torch.float64)
    tp = cm.diagonal()
    support = cm.sum(dim=1)  # true samples per class (row sums)
    predicted = cm.sum(dim=0)  # predictions per class (column sums)
    total = cm.sum()

    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)

    if k == 0:
        macro_p = macro_r = macro_f1 = 0.0
    else:
        macro_p = float(precision.mean())
        macro_r = float(recall.mean())
        macro_f1 = float(f1.mean())
    weighted_f1 = float((f1 * support).sum() / total) if total > 0 else 0.0
    # Like scikit-learn's balanced_accuracy_score: average recall only over classes that
    # actually occur in the true labels, so an absent class does not drag the score down.
    present = support > 0
    balanced = float(recall[present].mean()) if bool(present.any()) else 0.0

    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(round(float(support[i]))),
        }
        for i, name in enumerate(names)
    }
    return {
        "accuracy": float(tp.sum() / total) if total > 0 else 0.0,
        "macro_precision": macro_p,
        "macro_recall": macro_r,
        "macro_f1": macro_f1,
        "weighted_f1": weighted_f1,
        "balanced_acc": balanced,
        "per_class": per_class,
    }


def epoch_metrics_from_eval(
    loss: float, top1: float, top5: float, confusion: torch.Tensor
) -> dict[str, float]:
    """The scalar validation metrics one training epoch logs, keyed as metrics.jsonl names them
    (every key needs its entry in metric_table.METRICS)."""
    m = classification_metrics(confusion)
    return {
        "val_loss": float(loss),
        "val_acc": float(top1),
        "val_top5": float(top5),
        "val_macro_f1": m["macro_f1"],
        "val_balanced_acc": m["balanced_acc"],
        "val_macro_precision": m["macro_precision"],
        "val_macro_recall": m["macro_recall"],
    }
