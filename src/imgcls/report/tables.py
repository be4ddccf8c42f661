"""The numbers of a run's page, as rows: per-class scores with their averages, the most-confused
pairs, and the images a page shows. Each table is written as a CSV beside the page."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from imgcls.engine.metrics import classification_metrics

SCORES = ("precision", "recall", "f1")


def per_class_rows(confusion: torch.Tensor, classes: list[str]) -> tuple[list[dict], dict]:
    """Each class's precision, recall, F1 and support, then ``macro avg`` and ``weighted avg``
    rows (as scikit-learn's classification_report); and the summary scalars."""
    scores = classification_metrics(confusion, classes)
    rows: list[dict[str, Any]] = [{"class": name, **values}
                                  for name, values in scores["per_class"].items()]
    total = sum(r["support"] for r in rows)
    rows.append({"class": "macro avg", **{s: float(np.mean([r[s] for r in rows[:len(classes)]]))
                                         for s in SCORES}, "support": total})
    rows.append({"class": "weighted avg", **{
        s: (sum(r[s] * r["support"] for r in rows[:len(classes)]) / total if total else 0.0)
        for s in SCORES}, "support": total})
    summary = {key: scores[key] for key in ("accuracy", "balanced_acc", "macro_precision",
                                           "macro_recall", "macro_f1", "weighted_f1")}
    summary["weighted_precision"] = rows[-1]["precision"]
    summary["weighted_recall"] = rows[-1]["recall"]
    return rows, summary


def confused_pairs(confusion: torch.Tensor, classes: list[str], top: int = 10) -> list[dict]:
    """The largest off-diagonal cells: (true, predicted, count, fraction of the true class)."""
    cm = confusion.to(torch.int64)
    support = cm.sum(dim=1)
    cells = [(int(cm[i, j]), i, j) for i in range(len(classes)) for j in range(len(classes))
             if i != j and int(cm[i, j]) > 0]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [{"true": classes[i], "predicted": classes[j], "count": n,
             "fraction_of_true": n / int(support[i])} for n, i, j in cells[:top]]


def csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    columns = list(columns or (rows[0].keys() if rows else []))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def matrix_csv_text(matrix: Sequence[Sequence[Any]], classes: list[str], *,
                    corner: str = "true \\ predicted") -> str:
    """A square matrix with the class names as header row and first column."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([corner, *classes])
    for name, row in zip(classes, matrix, strict=True):
        writer.writerow([name, *row])
    return buffer.getvalue()


def csv_cell(value: str) -> str:
    """One CSV cell, quoted as the csv module would (a class name may hold a comma)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow([value])
    return buffer.getvalue()
