"""Evaluation reports: metrics JSON, the confusion matrix as CSV and as a PNG plot."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import torch


def write_eval_report(
    out_dir: Path, summary: dict[str, Any], confusion: torch.Tensor | None, classes: list[str]
) -> None:
    """``metrics.json``, and the confusion matrix of a single-label model (None: multi-label,
    where every class has its own two-by-two table, in ``per_class``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if confusion is None:
        return
    with (out_dir / "confusion_matrix.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["true \\ predicted", *classes])
        for name, row in zip(classes, confusion.tolist(), strict=True):
            writer.writerow([name, *row])
    plot_confusion(confusion, classes, out_dir / "confusion_matrix.png")


def plot_confusion(confusion: torch.Tensor, classes: list[str], path: Path) -> None:
    """Row-normalised confusion matrix, with counts written in the cells when there is room."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    counts = confusion.double()
    rates = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    n = len(classes)
    side = min(max(4.0, 0.55 * n + 2), 30.0)
    fig, ax = plt.subplots(figsize=(side, side))
    image = ax.imshow(rates.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= 30:
        ax.set_xticks(range(n), labels=classes, rotation=45, ha="right")
        ax.set_yticks(range(n), labels=classes)
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
