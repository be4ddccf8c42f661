"""A run's epochs as a table and a picture: ``results.csv`` and ``curves.png`` from
``metrics.jsonl``. Both are rewritten in full from the JSON lines each time, so a resumed run (whose
logger dropped the epochs after its checkpoint) never keeps rows the weights do not match."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imgcls.errors import ImgclsError
from imgcls.files import atomic_write, atomic_write_text
from imgcls.metric_table import names

# The panels of curves.png: (title, y label). A panel draws the metrics whose entry in
# metric_table.METRICS names it as their panel.
PANELS: tuple[tuple[str, str], ...] = (
    ("loss", "cross-entropy"), ("accuracy", "fraction"), ("learning rate", "lr"),
)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl``; a line cut off by a crash is skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ImgclsError(f"cannot read {path}: {exc.strerror or exc}") from None
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def scalar_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Every key holding a number or string in some row, in first-seen order (nested per-class
    dicts are left out: they do not fit one cell)."""
    columns: dict[str, None] = {}
    for row in rows:
        for key, value in row.items():
            if value is None or isinstance(value, (int, float, str, bool)):
                columns.setdefault(key, None)
    return list(columns)


def results_csv_text(rows: Sequence[dict[str, Any]]) -> str:
    """``results.csv``'s text: one row per epoch, the scalar columns of metrics.jsonl."""
    columns = scalar_columns(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
    return buffer.getvalue()


def plot_curves(runs: dict[str, Sequence[dict[str, Any]]], path: Path) -> None:
    """:func:`curves_figure` as a PNG at ``path``, written atomically."""
    fig = curves_figure(runs)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))


def curves_figure(runs: dict[str, Sequence[dict[str, Any]]]) -> Any:
    """Loss, accuracy and learning rate per epoch, one line per (run, metric). With several
    runs, each run keeps one colour and each metric one line style. Each panel's legend sits
    below it, where it hides no line."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5.2 * len(PANELS), 4.4))
    for ax, (title, ylabel) in zip(axes, PANELS, strict=True):
        keys = names(panel=title)
        drawn = False
        for r, (name, rows) in enumerate(runs.items()):
            for s, key in enumerate(keys):
                points = [(row["epoch"], row[key]) for row in rows
                          if isinstance(row.get(key), (int, float)) and "epoch" in row]
                if not points:
                    continue
                xs, ys = zip(*points, strict=True)
                label = key if len(runs) == 1 else f"{name}: {key}"
                ax.plot(xs, ys, styles[s % len(styles)], color=f"C{r % 10}" if len(runs) > 1
                        else f"C{s}", marker="o" if len(xs) < 30 else None, markersize=3,
                        label=label)
                drawn = True
        if title == "learning rate" and drawn:
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if drawn:  # under the x label, outside the axes: inside, lines run behind it
            ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2,
                      frameon=False)
    fig.tight_layout()  # makes room for the legends below
    return fig


def refresh_run_files(run_dir: Path) -> None:
    """Rewrite ``results.csv`` and ``curves.png`` in ``run_dir`` from its ``metrics.jsonl``."""
    rows = read_metrics(run_dir / "metrics.jsonl")
    atomic_write_text(run_dir / "results.csv", results_csv_text(rows))
    plot_curves({run_dir.name: rows}, run_dir / "curves.png")
