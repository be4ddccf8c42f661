"""A loaded checkpoint's scores for a split of its data or for image files: per-image logits,
with the true labels where they are known. ``imgcls evaluate`` (a checkpoint, or an
experiment's runs), ``imgcls report`` and ``imgcls predict`` all score through :func:`score`,
so they preprocess, batch and test-time-augment an image alike
(:func:`imgcls.engine.evaluation.batch_logits`, as the validation pass of training does).

>>> loaded = load_model("runs/NAME/checkpoints/best.pt")  # doctest: +SKIP
>>> score(loaded, split="test").logits().shape            # doctest: +SKIP
torch.Size([10000, 10])
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from imgcls.data import create_eval_dataset, load_rgb
from imgcls.data.folder import MAX_PIXELS
from imgcls.data.pipeline import BatchLoader, Preprocessing, build_eval_loader
from imgcls.data.splits import load_split
from imgcls.deploy.load import LoadedModel
from imgcls.engine.batches import Speed
from imgcls.engine.components import create_speed
from imgcls.engine.evaluation import Scored, iter_logits
from imgcls.errors import ImgclsError
from imgcls.runs.folder import run_dir_of

SPLITS = ("val", "test")


@dataclass
class Scores:
    """What :func:`score` gives: batch by batch and in input order, the fp32 logits and the
    labels (None for files), on the model's device."""

    batches: list[Scored]
    classes: list[str]
    source: str  # the data source scored (the run's own unless overridden); "" for files
    dataset: Dataset | None = None  # a split's images, untransformed: row i is dataset[i]
    errors: dict[int, str] = field(default_factory=dict)  # files: index -> why it is unread

    def logits(self) -> torch.Tensor:
        """N x K logits of the images scored, on the CPU."""
        if not self.batches:
            return torch.zeros(0, len(self.classes))
        return torch.cat([logits.cpu() for logits, _ in self.batches])

    def labels(self) -> torch.Tensor | None:
        """The N true class indices (None when unknown), on the CPU."""
        if self.dataset is None:  # files
            return None
        if not self.batches:
            return torch.zeros(0, dtype=torch.int64)
        return torch.cat([labels.cpu() for _, labels in self.batches])  # type: ignore[union-attr]

    def probabilities(self) -> torch.Tensor:
        """N x K softmax probabilities in float64 (each batch's on the device), on the CPU."""
        if not self.batches:
            return torch.zeros(0, len(self.classes), dtype=torch.float64)
        return torch.cat([torch.softmax(logits.double(), dim=1).cpu()
                          for logits, _ in self.batches])


def score(
    loaded: LoadedModel,
    *,
    split: str | None = None,
    files: Sequence[str] | None = None,
    run_dir: Path | None = None,
    data: str | None = None,
    batch_size: int = 64,
    tta: str | None = None,
    speed: Speed | None = None,
    progress: bool = False,
    require_images: bool = False,
) -> Scores:
    """Score ``split`` ("val" or "test") of the checkpoint's data, or image ``files``.

    A split is the one the run used: its ``split.json`` (in ``run_dir``, by default the
    checkpoint's run folder) unless ``data`` names another source; its classes must be the
    checkpoint's (``require_images``: an empty split is an error). It is read by the loader
    ``imgcls evaluate`` always used (decoded into memory when it fits, else a DataLoader; both
    keep the split's order). Files are decoded ``batch_size`` at a time on threads, each
    resized to the input size; one that cannot be read is an entry of ``errors``.

    ``tta`` (default: the config's train.tta) and ``speed`` (default: the config's
    channels-last and autocast on the device) are how each batch is scored, without gradients.
    """
    if (split is None) == (files is None):
        raise ValueError("score: pass split or files, not both")
    cfg = loaded.config
    if split is not None:
        dataset, batches = _split_batches(loaded, split, run_dir, data, require_images)
        source, desc = cfg.data.source, f"evaluate {split}"
    else:
        dataset, batches = None, _FileBatches(loaded, list(files or ()), batch_size)
        source, desc = "", "predict"
    speed = create_speed(cfg, loaded.device) if speed is None else speed
    if speed.channels_last:
        loaded.model.to(memory_format=torch.channels_last)
    scored = list(iter_logits(loaded.model, batches, loaded.device, speed=speed,
                              tta=cfg.train.tta if tta is None else tta, progress=progress,
                              desc=desc))
    errors = batches.errors if isinstance(batches, _FileBatches) else {}
    return Scores(scored, list(loaded.classes), source, dataset, errors)


def _split_batches(loaded: LoadedModel, split: str, run_dir: Path | None, data: str | None,
                   require_images: bool) -> tuple[Dataset, BatchLoader]:
    """The split's dataset (checked against the checkpoint) and its evaluation loader."""
    if split not in SPLITS:
        raise ImgclsError(f"--split must be val or test, got {split!r}")
    cfg = loaded.config
    run_dir = run_dir_of(loaded.path) if run_dir is None else run_dir
    split_record = None
    if (run_dir / "split.json").exists():
        record = load_split(run_dir / "split.json")
        if data is None or record.get("source") == cfg.data.source:
            split_record = record
    dataset, classes = create_eval_dataset(cfg.data, split, cfg.train.seed, split_record,
                                           classes=loaded.classes)
    if require_images and len(dataset) == 0:  # type: ignore[arg-type]
        raise ImgclsError(f"the {split} split of {cfg.data.source} has no images")
    if list(classes) != loaded.classes:
        raise ImgclsError(f"the classes of {cfg.data.source} ({split}) {list(classes)[:6]} "
                          f"differ from checkpoint {loaded.path}'s {loaded.classes[:6]}")
    prep = Preprocessing(loaded.input_size, loaded.mean_std)
    return dataset, build_eval_loader(cfg, dataset, prep, loaded.native_size, loaded.device)


def prepare_image(
    path: str, transform: v2.Compose, max_pixels: int = MAX_PIXELS
) -> torch.Tensor | str:
    """The model-ready tensor of one image file, or the one-line reason it cannot be read (also
    when its header says more than ``max_pixels`` pixels: it is then never decoded)."""
    if not os.path.isfile(path):
        return "broken symlink" if os.path.islink(path) else "file not found"
    try:
        return transform(load_rgb(path, max_pixels))
    except ImgclsError as exc:
        # load_rgb's message names the file; the result carries the path, so keep the reason.
        return str(exc).removeprefix(f"cannot read image {path}: ") or "cannot read image"


class _FileBatches:
    """``(images, None)`` batches of the readable ones of ``batch_size`` files at a time, with
    the checkpoint's evaluation transform at its input size (files come in any size) and the
    run's pixel limit; ``errors`` maps each unreadable file's index to why."""

    def __init__(self, loaded: LoadedModel, paths: list[str], batch_size: int) -> None:
        self.paths, self.batch_size = paths, batch_size
        self.transform = loaded.eval_transform(native_size=None)
        self.limit = loaded.config.data.max_image_pixels  # training's (old runs: the default)
        self.errors: dict[int, str] = {}

    def __len__(self) -> int:
        return math.ceil(len(self.paths) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, None]]:
        # Pillow and torch release the GIL while decoding and resizing: threads overlap the I/O.
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            for start in range(0, len(self.paths), self.batch_size):
                chunk = self.paths[start:start + self.batch_size]
                prepared = list(pool.map(
                    lambda p: prepare_image(p, self.transform, self.limit), chunk))
                for offset, item in enumerate(prepared):
                    if isinstance(item, str):
                        self.errors[start + offset] = item
                good = [t for t in prepared if isinstance(t, torch.Tensor)]
                if good:
                    yield torch.stack(good), None
