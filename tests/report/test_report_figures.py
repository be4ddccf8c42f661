"""The report page's figures as a reader sees them (issue 24, item 7): every colour of the
reliability diagram in its legend, confusion-matrix numbers of a readable size on the page,
curve legends that hide no line; and the command behind a run, from `imgcls train` to the
report's provenance row."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import _make_image_folder
from matplotlib.colors import to_rgba

from imgcls.cli import main
from imgcls.report import figures
from imgcls.report.calibration import calibration
from imgcls.report.page import CONTENT_PX
from imgcls.runs.checkpoint import load_checkpoint, save_checkpoint
from imgcls.runs.files import curves_figure
from imgcls.runs.record import command_line, provenance


def _close(fig) -> None:
    figures._pyplot().close(fig)


# --------------------------------------------------------------------------- reliability


def test_every_reliability_colour_is_in_its_legend():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.3, 1.0, 600)
    # under-confident below 0.6 (right more often than it says), over-confident above
    p_right = np.where(conf < 0.6, np.minimum(conf + 0.25, 1.0), conf - 0.2)
    cal = calibration(conf, rng.uniform(size=600) < p_right)
    assert (cal.accuracy > cal.confidence)[cal.count > 0].any()
    assert (cal.accuracy < cal.confidence)[cal.count > 0].any()
    fig = figures.reliability_figure(cal)
    try:
        (legend,) = fig.legends
        labels = [t.get_text() for t in legend.get_texts()]
        assert any(label.startswith("over-confident") for label in labels), labels
        assert any(label.startswith("under-confident") for label in labels), labels
        keyed = {to_rgba(h.get_facecolor()) for h in legend.legend_handles
                 if hasattr(h, "get_facecolor")}
        top = fig.axes[0]
        filled = [p for p in top.patches if p.get_fill() and p.get_height() != 0]
        assert len(filled) > cal.count.astype(bool).sum()  # accuracy bars and gaps
        for patch in filled:  # opaque, so what shows is exactly a colour the legend explains
            assert to_rgba(patch.get_facecolor()) in keyed
            assert to_rgba(patch.get_facecolor())[3] == 1.0
        fig.canvas.draw()  # the legend below the plots, covering none of them
        box = legend.get_window_extent()
        assert not any(box.overlaps(ax.get_window_extent()) for ax in fig.axes)
    finally:
        _close(fig)

    only_over = figures.reliability_figure(calibration(np.array([0.9, 0.92]),
                                                       np.array([0, 1])))
    labels = [t.get_text() for t in only_over.legends[0].get_texts()]
    _close(only_over)
    assert any(x.startswith("over-confident") for x in labels)
    assert not any(x.startswith("under-confident") for x in labels)  # nothing drawn, no entry


# --------------------------------------------------------------------------- confusion matrix


@pytest.mark.parametrize("n", [3, 20])
@pytest.mark.parametrize("normalized", [False, True])
def test_confusion_numbers_readable_on_the_page(n, normalized):
    gen = torch.Generator().manual_seed(n)
    confusion = torch.randint(0, 40, (n, n), generator=gen) + 300 * torch.eye(n,
                                                                            dtype=torch.int64)
    fig = figures.confusion_figure(confusion, [f"class {i}" for i in range(n)],
                                   normalized=normalized)
    try:
        ax = fig.axes[0]
        assert len(ax.texts) == n * n
        fig.set_dpi(figures.DPI)  # as saved
        renderer = fig.canvas.get_renderer()
        width_px = fig.get_figwidth() * figures.DPI
        scale = figures.shown_scale(fig.get_figwidth())
        if n == 20:  # fits the page's width: shown at its own size, not shrunk
            assert width_px <= CONTENT_PX and scale == 1.0
        ax.apply_aspect()
        cell_px = ax.get_window_extent(renderer).width / n
        for text in ax.texts:
            shown_px = text.get_fontsize() * figures.DPI / 72 * scale
            assert shown_px >= figures.MIN_TEXT_PX, (text.get_text(), shown_px)
            assert text.get_window_extent(renderer).width < 0.95 * cell_px, text.get_text()
    finally:
        _close(fig)


# --------------------------------------------------------------------------- curves


def test_curve_legends_hide_no_line():
    # every line climbs into the upper right, where a legend inside the axes would sit
    rows = [{"epoch": e, "train_loss": 1.0 + 0.01 * e, "val_loss": 0.9 + 0.02 * e,
             "train_acc": 0.5 + 0.05 * e, "val_acc": 0.55 + 0.045 * e,
             "val_macro_f1": 0.5 + 0.048 * e, "val_balanced_acc": 0.52 + 0.047 * e,
             "lr": 0.01 * e} for e in range(1, 11)]
    for runs in ({"a": rows}, {"a": rows, "b": rows[:4]}):
        fig = curves_figure(runs)
        try:
            fig.canvas.draw()
            renderer = fig.canvas.get_renderer()
            whole = fig.bbox
            for ax in fig.axes:
                legend = ax.get_legend()
                assert legend is not None
                box = legend.get_window_extent(renderer)
                assert not any(box.overlaps(other.get_window_extent(renderer))
                               for other in fig.axes)
                assert not box.overlaps(ax.xaxis.label.get_window_extent(renderer))
                assert (whole.x0 <= box.x0 and box.x1 <= whole.x1 and whole.y0 <= box.y0
                        and box.y1 <= whole.y1), "legend cut off"
        finally:
            _close(fig)


# --------------------------------------------------------------------------- the command


def test_command_line_forms():
    assert command_line(["/venv/bin/imgcls", "train", "--data", "a b", "optim.lr=0.1"]) == (
        "imgcls train --data 'a b' optim.lr=0.1")
    assert command_line(["/src/imgcls/__main__.py", "train"]) == "imgcls train"  # python -m
    assert command_line([""]) == "python: imgcls.api.train"
    assert command_line(["fit.py", "-x"]) == "python: imgcls.api.train, in fit.py -x"
    # this process is pytest: trained from Python
    assert provenance("cpu")["command"].startswith("python: imgcls.api.train")


def _provenance_row(page: str) -> str:
    start = page.index("<th>command</th><td>") + len("<th>command</th><td>")
    return page[start:page.index("</td>", start)]


def test_cli_command_reaches_the_report(tmp_path):
    data = _make_image_folder(tmp_path / "imgs", classes=("ant", "bee", "cat"), per_class=4,
                              layout="train_val", size=16)
    args = ["train", "--data", str(data), "--model", "lenet", "--epochs", "1",
            f"log.output={tmp_path / 'runs'}", "log.name=cli run", "log.progress=off",
            "log.tensorboard=false"]
    done = subprocess.run([sys.executable, "-m", "imgcls", *args], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    run = tmp_path / "runs" / "cli run"
    expected = shlex.join(["imgcls", *args])
    assert load_checkpoint(run / "checkpoints" / "last.pt")["provenance"]["command"] == expected

    assert main(["report", str(run), "--device", "cpu"]) == 0
    summary = json.loads((run / "report" / "summary.json").read_text())
    assert summary["provenance"]["command"] == expected
    source = (run / "report" / "index.html").read_text(encoding="utf-8")
    assert _provenance_row(source) == expected.replace("'", "&#x27;")
    assert "<th>trained with command</th>" not in source  # one row, not two

    # a checkpoint written before the command was stored
    for name in ("best.pt", "last.pt"):
        path = run / "checkpoints" / name
        if path.exists():
            payload = load_checkpoint(path)
            del payload["provenance"]["command"]
            save_checkpoint(payload, path)
    assert main(["report", str(run), "--device", "cpu", "--output", str(tmp_path / "old")]) == 0
    old = (tmp_path / "old" / "index.html").read_text(encoding="utf-8")
    assert _provenance_row(old) == "not recorded"
