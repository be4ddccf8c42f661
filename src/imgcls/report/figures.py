"""The report's pictures, as PNG bytes (the page embeds them; the same bytes go beside it)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from imgcls.report.calibration import Calibration
from imgcls.report.page import CONTENT_PX
from imgcls.report.selective import AccuracyCoverage

DPI = 90  # pixels per inch of the report's PNGs
MIN_TEXT_PX = 10.0  # the smallest a number in a figure is shown on the page (CSS px)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any, dpi: int = DPI) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    _pyplot().close(fig)
    return buffer.getvalue()


def shown_scale(width_in: float) -> float:
    """How much the page shrinks a figure ``width_in`` inches wide (1: shown at its own size).

    >>> shown_scale(4.0), round(shown_scale(20.0), 2)  # 1800 px shown at 1200
    (1.0, 0.67)
    """
    return min(1.0, CONTENT_PX / (width_in * DPI))


def cell_fontsize(cell_in: float, width_in: float, longest: int) -> float:
    """The size (points) of the numbers in a confusion matrix's cells ``cell_in`` inches wide,
    in a figure ``width_in`` inches wide: a third of the cell as the page shows it, narrower if
    ``longest`` characters would not fit, but never under MIN_TEXT_PX on the page, nor over 14.

    >>> round(cell_fontsize(1.0, 4.0, 4), 1)  # 90 px cells: 14 px text (11.2 pt at 90 dpi)
    11.2
    """
    scale = shown_scale(width_in)
    cell_px = cell_in * DPI * scale
    px = min(14.0, cell_px / 3, 0.85 * cell_px / (0.64 * max(longest, 1)))  # digits: ~0.64 em
    return max(px, MIN_TEXT_PX) / scale / DPI * 72


def confusion_png(confusion: torch.Tensor, classes: list[str], *, normalized: bool) -> bytes:
    """The confusion matrix, raw counts or each row divided by its class's images."""
    return _png(confusion_figure(confusion, classes, normalized=normalized))


def confusion_figure(confusion: torch.Tensor, classes: list[str], *, normalized: bool) -> Any:
    """:func:`confusion_png`'s matplotlib figure; each cell's number sized by
    :func:`cell_fontsize` for the cell the layout left."""
    plt = _pyplot()
    counts = confusion.double()
    values = counts / counts.sum(dim=1, keepdim=True).clamp(min=1) if normalized else counts
    n = len(classes)
    side = min(max(4.0, 0.5 * n + 2.5), 24.0)
    fig, ax = plt.subplots(figsize=(side, side * 0.9))
    vmax = 1.0 if normalized else max(float(values.max()), 1.0)
    image = ax.imshow(values.numpy(), cmap="Blues", vmin=0.0, vmax=vmax)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
                 label="fraction of the true class" if normalized else "images")
    if n <= 30:
        ax.set_xticks(range(n), labels=classes, rotation=45, ha="right")
        ax.set_yticks(range(n), labels=classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix, row-normalised" if normalized else "confusion matrix, counts")
    fig.tight_layout()
    if n <= 30:  # the numbers go in once the layout has settled the cells' size
        texts = [[f"{float(v):.2f}" if normalized else str(int(v)) for v in row]
                 for row in values]
        annotate_cells(fig, ax, texts, values.numpy(), vmax)
    return fig


def annotate_cells(fig: Any, ax: Any, texts: Sequence[Sequence[str]], values: np.ndarray,
                   vmax: float) -> None:
    """Each cell's text of an n x n matrix drawn with ``imshow``, sized by
    :func:`cell_fontsize` for the cells the (settled) layout left; white on the darker half of
    the colour scale."""
    n = len(texts)
    ax.apply_aspect()
    box = ax.get_position()
    cell_in = min(box.width * fig.get_figwidth(), box.height * fig.get_figheight()) / n
    size = cell_fontsize(cell_in, fig.get_figwidth(), max(len(t) for row in texts for t in row))
    for i in range(n):
        for j in range(n):
            ax.text(j, i, texts[i][j], ha="center", va="center", fontsize=size,
                    color="white" if float(values[i, j]) > 0.5 * vmax else "black")


# The reliability diagram's bars: (label, face, edge, hatch), the label filled in with the
# words of the diagram (Words). Opaque, so a gap drawn over an accuracy bar shows the very
# colour its legend entry does.
ACCURACY_BAR = ("{outcome}", "C0", "black", "")
OVER_GAP = ("over-confident: mean {score} above {outcome}", "#f4a9a8", "C3", "//")
UNDER_GAP = ("under-confident: {outcome} above mean {score}", "#fcd98b", "#b07800", "..")


@dataclass(frozen=True)
class Words:
    """What a reliability diagram's bins measure: one label per image (the top-1 confidence
    and whether it was right), or each label of each image (its probability, and whether the
    image has it)."""

    outcome: str = "accuracy"
    score: str = "confidence"
    axis: str = "confidence (top-1 probability)"
    unit: str = "images"


TOP1_WORDS = Words()
LABEL_WORDS = Words("fraction positive", "probability", "probability of the label", "labels")


def reliability_png(cal: Calibration, words: Words = TOP1_WORDS) -> bytes:
    """Accuracy against confidence per bin (bars), the diagonal of perfect calibration, and
    how many images each bin holds (below)."""
    return _png(reliability_figure(cal, words))


def reliability_figure(cal: Calibration, words: Words = TOP1_WORDS) -> Any:
    """:func:`reliability_png`'s matplotlib figure. Each bin's gap between accuracy and mean
    confidence is drawn above the bar (over-confident) or over its top (under-confident), in
    the colour of its legend entry; the legend sits below the plots, covering no bar."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.5, 6.6), sharex=True, layout="constrained",
                                      gridspec_kw={"height_ratios": [3, 1]})
    width = cal.upper - cal.lower
    filled = cal.count > 0
    acc, conf = cal.accuracy, cal.confidence
    _, face, edge, hatch = ACCURACY_BAR
    top.bar(cal.lower[filled], acc[filled], width=width[filled], align="edge", color=face,
            edgecolor=edge, hatch=hatch)
    shown = [ACCURACY_BAR]
    for style, gap in ((OVER_GAP, filled & (conf > acc)), (UNDER_GAP, filled & (conf < acc))):
        if gap.any():
            _, face, edge, hatch = style
            low = np.minimum(acc, conf)[gap]
            top.bar(cal.lower[gap], np.abs(conf - acc)[gap], bottom=low, width=width[gap],
                    align="edge", color=face, edgecolor=edge, hatch=hatch, linewidth=0.8)
            shown.append(style)
    # the accuracy bars' outlines again, over the gaps: each bar's height stays visible
    top.bar(cal.lower[filled], acc[filled], width=width[filled], align="edge", fill=False,
            edgecolor="black")
    (diagonal,) = top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel(words.outcome)
    top.set_title(f"reliability diagram (ECE {cal.ece:.4f}, {len(cal.count)} bins)")
    handles = [Patch(facecolor=f, edgecolor=e, hatch=h, label=label.format(
        outcome=words.outcome, score=words.score)) for label, f, e, h in shown] + [diagonal]
    fig.legend(handles=handles, loc="outside lower center", fontsize=8, ncol=1, frameon=False)
    bottom.bar(cal.lower, cal.count, width=width, align="edge", color="C7", edgecolor="black")
    bottom.set_xlabel(words.axis)
    bottom.set_ylabel(words.unit)
    return fig


def accuracy_coverage_png(curve: AccuracyCoverage, rows: Sequence[dict]) -> bytes:
    """Accuracy of the kept images against the share kept (``predict --min-confidence``)."""
    return _png(accuracy_coverage_figure(curve, rows))


def accuracy_coverage_figure(curve: AccuracyCoverage, rows: Sequence[dict]) -> Any:
    """Accuracy of the kept images against the share kept, the targets' points marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.2), layout="constrained")
    ax.plot(curve.coverage, curve.accuracy, color="C0", linewidth=1.5,
            label="keeping confidence >= P")
    for row in rows:
        if row["min_confidence"] is not None:
            ax.plot(row["coverage"], row["accuracy"], "o", color="C3")
            ax.annotate(f"{row['target_accuracy']:.0%}: P {row['min_confidence']:.3f}",
                        (row["coverage"], row["accuracy"]), textcoords="offset points",
                        xytext=(-8, -12), ha="right", fontsize=8)
    if len(curve.accuracy):
        ax.axhline(curve.accuracy[-1], color="C7", linestyle="--", linewidth=1,
                   label=f"all images ({curve.accuracy[-1]:.3f})")
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("coverage (share of images answered)")
    ax.set_ylabel("accuracy of the answered images")
    ax.set_title("accuracy against coverage")
    ax.legend(loc="lower left", fontsize=8, frameon=False)
    return fig


def grid_png(images: Sequence[Image.Image], captions: Sequence[str], *,
             columns: int = 6, cell: int = 128) -> bytes:
    """Thumbnails in a grid, each with its caption lines above it. Drawn with Pillow, not
    matplotlib: a dozen subplots would cost seconds, this costs milliseconds."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default(size=11)
    lines = max((c.count("\n") + 1 for c in captions), default=1)
    text_h = 14 * lines + 4
    rows = max(1, -(-len(images) // columns))
    sheet = Image.new("RGB", (columns * (cell + 8) + 8, rows * (cell + text_h + 8) + 8), "white")
    draw = ImageDraw.Draw(sheet)
    for n, (image, caption) in enumerate(zip(images, captions, strict=True)):
        x = 8 + (n % columns) * (cell + 8)
        y = 8 + (n // columns) * (cell + text_h + 8)
        draw.multiline_text((x, y), caption, fill="black", font=font, spacing=3)
        scale = cell / max(image.size)
        shown = image.resize((max(1, round(image.width * scale)),
                              max(1, round(image.height * scale))), Image.Resampling.NEAREST)
        sheet.paste(shown, (x, y + text_h))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()


def thumbnail_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
