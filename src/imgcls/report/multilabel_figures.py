"""The pictures of a multi-label run's page, as PNG bytes: precision-recall curves, a label
co-occurrence matrix, and per-class reliability diagrams."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from imgcls.report.calibration import Calibration
from imgcls.report.figures import _png, _pyplot, annotate_cells
from imgcls.report.multilabel import PRCurve

MAX_LINES = 10  # classes drawn as lines of one plot; more get a small plot each
MAX_PANELS = 36  # small plots at most (6 x 6); the page says which classes they show
MAX_CELL_NUMBERS = 30  # a matrix of more labels is drawn without its numbers and names


def pr_curves_png(curves: Sequence[tuple[str, PRCurve, float, tuple[float, float]]]) -> bytes:
    """:func:`pr_curves_figure` as PNG bytes."""
    return _png(pr_curves_figure(curves))


def pr_curves_figure(curves: Sequence[tuple[str, PRCurve, float, tuple[float, float]]]) -> Any:
    """Precision against recall of each (class, curve, AP, (recall, precision) at the class's
    threshold): one line per class up to MAX_LINES, else one small plot per class. Drawn as
    steps (each recall keeps the precision of the cut that reached it), the area under which
    is the AP; a dot marks where the checkpoint's threshold puts the class."""
    plt = _pyplot()
    if len(curves) <= MAX_LINES:
        fig, ax = plt.subplots(figsize=(6.5, 6.4), layout="constrained")
        for i, (name, curve, ap, (rec, prec)) in enumerate(curves):
            color = f"C{i % 10}"
            ax.step(curve.recall, curve.precision, where="pre", color=color,
                    label=f"{name} (AP {ap:.3f})")
            ax.plot(rec, prec, "o", color=color, markeredgecolor="black", markersize=6)
        _pr_axes(ax)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title("precision-recall per class (dot: at its threshold)")
        # below the plot: a legend inside would hide the upper right, where good curves run
        fig.legend(loc="outside lower center", ncol=2, fontsize=8, frameon=False)
        return fig
    cols = 6
    rows = math.ceil(len(curves) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.1, rows * 2.1 + 0.4), sharex=True,
                             sharey=True, squeeze=False, layout="constrained")
    for ax, (name, curve, ap, (rec, prec)) in zip(axes.flat, curves, strict=False):
        ax.step(curve.recall, curve.precision, where="pre", color="C0")
        ax.plot(rec, prec, "o", color="C3", markersize=4)
        _pr_axes(ax)
        ax.set_title(f"{_short(name)}\nAP {ap:.3f}", fontsize=8)
        ax.tick_params(labelsize=7)
    return _finish_grid(fig, axes, len(curves), "recall", "precision",
                        "precision-recall per class (red dot: at its threshold)")


def _finish_grid(fig: Any, axes: Any, used: int, xlabel: str, ylabel: str, title: str) -> Any:
    """Small multiples: the unused panels blanked, one label per axis and a title."""
    for ax in axes.flat[used:]:
        ax.axis("off")
    fig.supxlabel(xlabel)
    fig.supylabel(ylabel)
    fig.suptitle(title)
    return fig


def _pr_axes(ax: Any) -> None:
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.04)
    ax.grid(alpha=0.3)


def _short(name: str, most: int = 18) -> str:
    return name if len(name) <= most else name[:most - 3] + "..."


def cooccurrence_png(matrix: np.ndarray, classes: list[str], title: str, vmax: float) -> bytes:
    """:func:`cooccurrence_figure` as PNG bytes."""
    return _png(cooccurrence_figure(matrix, classes, title, vmax))


def cooccurrence_figure(matrix: np.ndarray, classes: list[str], title: str, vmax: float) -> Any:
    """Images having both labels, one cell per pair (symmetric; the diagonal: images with the
    label). ``vmax`` is shared by the true and the predicted matrix, so one colour is one count
    in both."""
    plt = _pyplot()
    n = len(classes)
    side = min(max(4.0, 0.45 * n + 2.5), 24.0)
    fig, ax = plt.subplots(figsize=(side, side * 0.9))
    vmax = max(float(vmax), 1.0)
    image = ax.imshow(matrix, cmap="Purples", vmin=0.0, vmax=vmax)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="images")
    if n <= MAX_CELL_NUMBERS:
        ax.set_xticks(range(n), labels=classes, rotation=45, ha="right")
        ax.set_yticks(range(n), labels=classes)
    ax.set_title(title)
    fig.tight_layout()
    if n <= MAX_CELL_NUMBERS:  # the numbers go in once the layout has settled the cells
        annotate_cells(fig, ax, [[str(int(v)) for v in row] for row in matrix], matrix, vmax)
    return fig


def class_reliability_png(cals: Sequence[Calibration], classes: list[str]) -> bytes:
    """:func:`class_reliability_figure` as PNG bytes."""
    return _png(class_reliability_figure(cals, classes))


def class_reliability_figure(cals: Sequence[Calibration], classes: list[str]) -> Any:
    """One small reliability diagram per class: in each probability bin holding images, the
    fraction that have the label (bar) against the diagonal of perfect calibration, and the
    bin's mean probability (dot): a dot right of its bar's top is over-confident."""
    plt = _pyplot()
    cols = min(4, len(cals))
    rows = math.ceil(len(cals) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.8, rows * 2.8 + 0.4), sharex=True,
                             sharey=True, squeeze=False, layout="constrained")
    for ax, cal, name in zip(axes.flat, cals, classes, strict=False):
        filled = cal.count > 0
        ax.bar(cal.lower[filled], cal.accuracy[filled], width=(cal.upper - cal.lower)[filled],
               align="edge", color="C0", edgecolor="black", linewidth=0.6)
        ax.plot(cal.confidence[filled], cal.accuracy[filled], "o", color="C3", markersize=3)
        ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{_short(name)}: ECE {cal.ece:.3f}", fontsize=9)
        ax.tick_params(labelsize=7)
    return _finish_grid(fig, axes, len(cals), "probability of the label (bin)",
                        "fraction of images with the label",
                        "reliability per class (red dot: the bin's mean probability)")
