"""The report's pictures, as PNG bytes (the page embeds them; the same bytes go beside it)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from imgcls.report.calibration import Calibration


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any, dpi: int = 90) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    _pyplot().close(fig)
    return buffer.getvalue()


def confusion_png(confusion: torch.Tensor, classes: list[str], *, normalized: bool) -> bytes:
    """The confusion matrix, raw counts or each row divided by its class's images."""
    plt = _pyplot()
    counts = confusion.double()
    values = counts / counts.sum(dim=1, keepdim=True).clamp(min=1) if normalized else counts
    n = len(classes)
    side = min(max(4.0, 0.5 * n + 2.5), 24.0)
    fig, ax = plt.subplots(figsize=(side, side * 0.9))
    image = ax.imshow(values.numpy(), cmap="Blues", vmin=0.0,
                      vmax=1.0 if normalized else max(float(values.max()), 1.0))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
                 label="fraction of the true class" if normalized else "images")
    if n <= 30:
        ax.set_xticks(range(n), labels=classes, rotation=45, ha="right")
        ax.set_yticks(range(n), labels=classes)
        top = float(values.max()) or 1.0
        for i in range(n):
            for j in range(n):
                v = float(values[i, j])
                ax.text(j, i, f"{v:.2f}" if normalized else str(int(v)), ha="center",
                        va="center", fontsize=7, color="white" if v > 0.5 * top else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix, row-normalised" if normalized else "confusion matrix, counts")
    fig.tight_layout()
    return _png(fig)


def reliability_png(cal: Calibration) -> bytes:
    """Accuracy against confidence per bin (bars), the diagonal of perfect calibration, and
    how many images each bin holds (below)."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.5, 6.0), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    width = cal.upper - cal.lower
    filled = cal.count > 0
    top.bar(cal.lower[filled], cal.accuracy[filled], width=width[filled], align="edge",
            edgecolor="black", color="C0", label="accuracy")
    top.bar(cal.lower[filled], cal.confidence[filled] - cal.accuracy[filled],
            bottom=cal.accuracy[filled], width=width[filled], align="edge", color="C3",
            alpha=0.35, edgecolor="C3", label="gap to mean confidence")
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(f"reliability diagram (ECE {cal.ece:.4f}, {len(cal.count)} bins)")
    top.legend(fontsize=8, loc="upper left")
    bottom.bar(cal.lower, cal.count, width=width, align="edge", color="C7", edgecolor="black")
    bottom.set_xlabel("confidence (top-1 probability)")
    bottom.set_ylabel("images")
    fig.tight_layout()
    return _png(fig)


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
