"""Shared test data builders: real on-disk image folders, CIFAR pickles and list files.

Each builder is a plain function (``from conftest import _make_image_folder``) and a fixture
returning it (``make_image_folder``). Contents are seeded, so every run writes the same files. With
``learnable=True`` class k has its own dominant colour (plus noise), so a tiny CNN separates the
classes within a few steps.
"""

from __future__ import annotations

import colorsys
import os
import pickle
import re
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.engine.trainer import Callback

# A test run started in the background by a non-interactive shell (`pytest &`) inherits SIGINT
# ignored, as POSIX has it, and so would every imgcls process the tests start, which then could
# not show what Ctrl-C does: give SIGINT back the handler a terminal's Python has (a handled
# signal is reset to its default in the children).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# (extension, Pillow mode written): every format and awkward mode the loaders must turn into RGB.
FORMATS = [
    ("jpg", "RGB"),
    ("png", "RGB"),
    ("bmp", "RGB"),
    ("gif", "P"),
    ("webp", "RGB"),
    ("png", "L"),
    ("png", "RGBA"),
    ("JPEG", "CMYK"),
    ("png", "LA"),
    ("png", "P+transparency"),
]

LAYOUTS = {
    "flat": [""],
    "train_val": ["train", "val"],
    "train_val_test": ["train", "val", "test"],
    "train_test": ["train", "test"],
}


def class_color(k: int, num_classes: int) -> np.ndarray:
    """A distinct, saturated RGB colour for class ``k`` (hues spread round the wheel)."""
    r, g, b = colorsys.hsv_to_rgb(k / max(num_classes, 1), 0.85, 0.9)
    return np.array([r, g, b]) * 255.0


def random_pixels(
    rng: np.random.Generator, height: int, width: int, k: int, num_classes: int, learnable: bool
) -> np.ndarray:
    """An H x W x 3 uint8 array: the class colour plus noise, or pure noise."""
    if learnable:
        base = class_color(k, num_classes)
        pixels = base + rng.normal(0.0, 25.0, size=(height, width, 3))
    else:
        pixels = rng.uniform(0, 255, size=(height, width, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def save_image(pixels: np.ndarray, path: Path, mode: str) -> None:
    """Write RGB ``pixels`` to ``path`` converted to ``mode`` (format from the extension)."""
    img = Image.fromarray(pixels, "RGB")
    if mode == "P+transparency":
        img.convert("P", palette=Image.Palette.ADAPTIVE).save(path, transparency=0)
        return
    if mode == "P":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE)
    elif mode == "RGBA":
        img = img.convert("RGBA")
        img.putalpha(200)
    elif mode != "RGB":
        img = img.convert(mode)
    img.save(path)


def _make_image_folder(
    root: Path,
    classes: Sequence[str] = ("ants", "bees"),
    per_class: int = 8,
    layout: str = "flat",
    size: int | None = None,
    learnable: bool = True,
    seed: int = 0,
) -> Path:
    """Write ``root/[split/]<class>/<class>_NNN.<ext>`` and return ``root``.

    ``layout``: ``flat`` (class folders directly in root), ``train_val``, ``train_val_test`` or
    ``train_test``; every split folder gets ``per_class`` images per class. Formats and modes
    cycle through FORMATS; sizes are random in 20..48 px (not square) unless ``size`` is given.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split in LAYOUTS[layout]:
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                height, width = (size, size) if size else rng.integers(20, 49, size=2)
                ext, mode = FORMATS[(i + k) % len(FORMATS)]
                pixels = random_pixels(rng, int(height), int(width), k, len(classes), learnable)
                save_image(pixels, folder / f"{name}_{i:03d}.{ext}", mode)
    return root


def _make_list_file(
    root: Path,
    classes: Sequence[str] = ("ants", "bees"),
    per_class: int = 8,
    int_labels: bool = False,
    name: str = "train.txt",
    size: int | None = None,
    learnable: bool = True,
    seed: int = 0,
) -> Path:
    """Write images under ``root/images/<class>/`` and a list file ``root/name``; returns it.

    Lines are ``images/<class>/<file> <label>`` with the class name as label, or its index with
    ``int_labels``. The first image of every class has a space in its file name, and the file
    opens with a comment and a blank line, as real list files do.
    """
    root = Path(root)
    _make_image_folder(root / "images", classes, per_class, "flat", size, learnable, seed)
    lines = ["# relative/path label", ""]
    for k, cls in enumerate(classes):
        for path in sorted((root / "images" / cls).iterdir()):
            if path.name.endswith("_000" + path.suffix):
                path = path.rename(path.with_name(f"{cls} first{path.suffix}"))
            label = str(k) if int_labels else cls
            lines.append(f"{path.relative_to(root).as_posix()} {label}")
    list_file = root / name
    list_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return list_file


def _make_label_csv(
    root: Path,
    classes: Sequence[str] = ("cat", "dog", "car"),
    n: int = 48,
    layout: str = "tags",
    size: int = 16,
    seed: int = 0,
    name: str = "labels.csv",
) -> Path:
    """Write ``n`` PNGs under ``root/images/`` and a multi-label CSV ``root/name``; returns it.

    Image i has each class with probability 0.4 (so some have none and some all); class k
    present lights the k-th horizontal band of the image in its own colour, so a tiny CNN learns
    the labels in a few epochs. ``layout``: ``tags`` (``path,tags``, labels separated by spaces,
    one row by ``;``) or ``columns`` (``path,<class>...`` with 0/1 cells)."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = [["path", "tags"] if layout == "tags" else ["path", *classes]]
    band = max(size // len(classes), 1)
    for i in range(n):
        present = rng.random(len(classes)) < 0.4
        pixels = rng.normal(60.0, 20.0, size=(size, size, 3))
        for k in np.flatnonzero(present):
            pixels[k * band:(k + 1) * band] = class_color(k, len(classes))
        path = root / "images" / f"img_{i:03d}.png"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").save(path)
        names = [c for c, on in zip(classes, present, strict=True) if on]
        if layout == "tags":
            rows.append([f"images/{path.name}", (";" if i == 1 else " ").join(names)])
        else:
            rows.append([f"images/{path.name}", *(str(int(on)) for on in present)])
    text = "\n".join(",".join(row) for row in rows) + "\n"
    (root / name).write_text(text, encoding="utf-8")
    return root / name


def _make_cifar_batches(
    root: Path,
    n_train: int = 100,
    n_test: int = 40,
    num_classes: int = 10,
    learnable: bool = True,
    kind: str = "cifar10",
    seed: int = 0,
) -> Path:
    """Write an extracted CIFAR copy in ``root`` and return its folder.

    ``kind="cifar10"``: ``cifar-10-batches-py`` with data_batch_1..5, test_batch, batches.meta;
    ``kind="cifar100"``: ``cifar-100-python`` with train, test, meta. ``data`` is uint8
    N x 3072 (R, G, B planes of 32 x 32). Keys are ``str``: the official files are Python 2
    pickles whose keys torchvision reads back as ``str`` (it unpickles with latin1).
    """
    if kind not in ("cifar10", "cifar100"):
        raise ValueError(f"kind must be cifar10 or cifar100, got {kind!r}")
    rng = np.random.default_rng(seed)
    folder = Path(root) / ("cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)

    def batch(n: int) -> dict:
        # Balanced labels (n // num_classes or one more per class), in random order.
        labels = rng.permutation(np.arange(n) % num_classes).tolist()
        images = np.zeros((n, 32, 32, 3), np.uint8)
        for i, y in enumerate(labels):
            images[i] = random_pixels(rng, 32, 32, y, num_classes, learnable)
        data = images.transpose(0, 3, 1, 2).reshape(n, 3072)  # HWC -> R, G, B planes
        if kind == "cifar10":
            return {"batch_label": "batch", "labels": labels, "data": data}
        coarse = [y % 20 for y in labels]
        return {"fine_labels": labels, "coarse_labels": coarse, "data": data}

    def part(whole: dict, rows: np.ndarray) -> dict:
        return {"batch_label": "batch", "labels": [whole["labels"][i] for i in rows],
                "data": whole["data"][rows]}

    def dump(obj: dict, name: str) -> None:
        with open(folder / name, "wb") as f:
            pickle.dump(obj, f, protocol=2)

    names = [f"class_{k}" for k in range(num_classes)]
    if kind == "cifar10":
        train = batch(n_train)  # split after labelling, so every class spans the batches
        for i, rows in enumerate(np.array_split(np.arange(n_train), 5), start=1):
            dump(part(train, rows), f"data_batch_{i}")
        dump(batch(n_test), "test_batch")
        dump({"label_names": names, "num_cases_per_batch": n_train // 5}, "batches.meta")
    else:
        dump(batch(n_train), "train")
        dump(batch(n_test), "test")
        coarse_names = [f"super_{k}" for k in range(20)]
        dump({"fine_label_names": names, "coarse_label_names": coarse_names}, "meta")
    return folder


@pytest.fixture
def make_image_folder():
    """Factory: ``make_image_folder(root, classes, per_class, layout, size, learnable)``."""
    return _make_image_folder


@pytest.fixture
def make_list_file():
    """Factory: ``make_list_file(root, classes, per_class, int_labels, name, ...)``."""
    return _make_list_file


@pytest.fixture
def make_label_csv():
    """Factory: ``make_label_csv(root, classes, n, layout, size, seed, name)``."""
    return _make_label_csv


@pytest.fixture
def make_cifar_batches():
    """Factory: ``make_cifar_batches(root, n_train, n_test, num_classes, learnable, kind)``."""
    return _make_cifar_batches


class InterruptDuringEpoch:
    """A training callback that stops the run in the middle of epoch ``epoch + 1`` as Ctrl-C
    would: after epoch ``epoch`` is saved, one more batch is drawn, then KeyboardInterrupt."""

    key = ""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_fit_start(self, trainer) -> None: ...

    def on_first_batch(self, trainer, images, labels) -> None: ...

    def on_fit_end(self, trainer) -> None: ...

    def on_epoch_end(self, trainer, metrics):
        if metrics["epoch"] == self.epoch:
            inner = trainer.train_loader

            class Interrupting:
                def __len__(self) -> int:
                    return len(inner)

                def set_epoch(self, epoch: int) -> None:
                    inner.set_epoch(epoch)

                def __iter__(self):
                    iterator = iter(inner)
                    yield next(iterator)  # part of an epoch happens, then the interrupt
                    raise KeyboardInterrupt

            trainer.train_loader = Interrupting()
        return None


class SignalAtSave(Callback):
    """Sends ``sig`` to this process at the ``nth`` mid-epoch save, as a scheduler would: the
    stop is graceful, so the run saves again at the next step and stops there."""

    def __init__(self, nth: int, sig: int = signal.SIGINT) -> None:
        self.nth, self.sig, self.saves = nth, sig, 0

    def on_mid_epoch_save(self, trainer, progress) -> None:
        self.saves += 1
        if self.saves == self.nth:
            os.kill(os.getpid(), self.sig)


class BlowUpAfter(Callback):
    """Sets an absurd learning rate after epoch ``epoch``: the next epoch diverges."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, trainer, metrics):
        if metrics["epoch"] == self.epoch:
            for group in trainer.state.optimizer.param_groups:
                group["lr"] = 1e12
        return None


def tune_base(tmp_path: Path, data: Path, **extra: object):
    """The base config of a tiny tune study: lenet on a small folder, quarter held out."""
    from imgcls.config import build_config

    return build_config(overrides={
        "data.source": str(data), "model.name": "lenet", "train.epochs": 2,
        "loader.batch_size": 4, "log.progress": "off", "log.tensorboard": False,
        "data.val_fraction": 0.25, "log.output": str(tmp_path / "runs"),
        "data.root": str(tmp_path / "cache"), **extra})


def interrupt_and_resume(cfg, at_epoch: int):
    """Train ``cfg``, stopped in the middle of the epoch after ``at_epoch`` (as Ctrl-C would),
    then resumed to ``train.epochs``; returns the resumed run's RunResult."""
    from imgcls import api
    from imgcls.runs.checkpoint import load_checkpoint

    with pytest.raises(KeyboardInterrupt):
        api.train(cfg, callbacks=[InterruptDuringEpoch(at_epoch)])
    run = Path(cfg.log.output) / cfg.log.name
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == at_epoch
    resumed = api.train(resume=run)
    assert resumed.epochs == cfg.train.epochs and resumed.run_dir == run
    return resumed


def assert_same_weights(a: Path, b: Path) -> None:
    """The two runs' last.pt hold bit-identical weights."""
    from imgcls.runs.checkpoint import load_checkpoint

    wa = load_checkpoint(a / "checkpoints" / "last.pt")["model"]
    wb = load_checkpoint(b / "checkpoints" / "last.pt")["model"]
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``imgcls ARGV`` in-process: (exit code, stdout, stderr)."""
    from imgcls.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    """Exit code 2 and one `imgcls: error:` line (no traceback) holding every needle."""
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("imgcls: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# --------------------------------------------------------------------------- browser


def chromium() -> str:
    """Debian's chromium: a test that needs it fails without it (.ci/run installs it)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:  # a failure, not a skip: the page must be seen in a browser
        pytest.fail("chromium is not installed; install it with `apt-get update && apt-get "
                    "install -y chromium` (.ci/run does this)")
    return exe


def render_in_browser(page: Path, out: Path) -> tuple[str, str]:
    """The DOM Chromium rendered (and its console log), and a 1280 x 4000 screenshot."""
    exe = chromium()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,4000"]
    dom = subprocess.run([exe, *flags, "--enable-logging=stderr", "--v=0", "--dump-dom",
                          page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = subprocess.run([exe, *flags, f"--screenshot={out}", page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert shot.returncode == 0 and out.is_file(), shot.stderr[-2000:]
    return dom.stdout, dom.stderr


def check_rendered_page(dom: str, log: str, source: str, sections: tuple[str, ...],
                    screenshot: Path) -> None:
    """No console errors, every section and embedded image rendered, a non-blank screenshot."""
    console = [line for line in log.splitlines()
               if "Uncaught" in line or "CONSOLE" in line or "ERR_FILE_NOT_FOUND" in line]
    assert not console, console
    for section in sections:
        assert f'<section id="{section}">' in dom, section
    images = re.findall(r"<img [^>]*>", dom)
    assert len(images) == len(re.findall(r"<img ", source)) > 0
    assert all('src="data:image/png;base64,' in img for img in images)
    assert "http://" not in source and "https://" not in source and "<script" not in source
    with Image.open(screenshot) as shot:
        assert shot.format == "PNG" and shot.size == (1280, 4000)
        pixels = np.asarray(shot.convert("RGB"))
    # text, tables and figures in the first screenful, not a blank page
    inked = (pixels[:1200].min(axis=2) < 200).mean()
    assert inked > 0.02, f"only {inked:.2%} of the first 1200 px is not white"
    assert len(np.unique(pixels.reshape(-1, 3)[::7], axis=0)) > 50
