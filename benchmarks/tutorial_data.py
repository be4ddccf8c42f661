"""What the benchmark scripts share: where the images are, the tutorial's own pipeline
(ImageFolder + PIL transforms + DataLoader) and imgcls's decode of the same files."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from imgcls.data.cifar import MEAN_STD
from imgcls.data.decode_cache import decode_to_tensor
from imgcls.data.folder import ImageFileDataset, scan_folder

ROOT = Path(__file__).resolve().parent.parent
CIFAR_MEAN, CIFAR_STD = MEAN_STD["cifar10"]
SIZE = 32
PADDING = 4


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    """Every benchmark's ``--data``: the shared CIFAR-10 copy beside the checkout by default."""
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/cifar10",
                        help="folder of class folders, or a folder holding train/")


def resolve_folder(data: Path) -> Path:
    """The folder of class folders: ``data/train`` when there is one, else ``data``."""
    data = data.expanduser().resolve()
    return data / "train" if (data / "train").is_dir() else data


def pick_samples(
    folder: Path, limit: int | None
) -> tuple[list[tuple[str, int]], list[str], list[int], int]:
    """imgcls's scan of ``folder`` and the matching ImageFolder indices, on the files both read.

    Returns (imgcls samples, classes, ImageFolder indices of the same files in the same order,
    files only one of the two reads). With ``limit``, a seeded random subset of that many.
    """
    samples, classes = scan_folder(folder)
    tutorial = datasets.ImageFolder(str(folder))
    if list(tutorial.classes) != classes:
        raise SystemExit(f"ImageFolder and imgcls see different classes in {folder}")
    index = {path: i for i, (path, _) in enumerate(tutorial.samples)}
    common = [(p, y) for p, y in samples if p in index]
    only_one = len(samples) + len(tutorial.samples) - 2 * len(common)
    if limit is not None and limit < len(common):
        g = torch.Generator().manual_seed(0)
        keep = sorted(torch.randperm(len(common), generator=g)[:limit].tolist())
        common = [common[i] for i in keep]
    if not common:
        raise SystemExit(f"no images that both ImageFolder and imgcls read in {folder}")
    return common, classes, [index[p] for p, _ in common], only_one


def tutorial_loader(folder: Path, indices: list[int], batch_size: int,
                    workers: int = 0) -> DataLoader:
    """The tutorial's pipeline: ImageFolder + PIL RandomCrop(32, padding=4), flip, ToTensor,
    Normalize, and a plain shuffling DataLoader."""
    train_tf = transforms.Compose([
        transforms.RandomCrop(SIZE, padding=PADDING),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(CIFAR_MEAN, CIFAR_STD),
    ])
    full = datasets.ImageFolder(str(folder), transform=train_tf)
    data = full if len(indices) == len(full) else Subset(full, indices)
    return DataLoader(data, batch_size=batch_size, shuffle=True, num_workers=workers)


def timed_decode(dataset: ImageFileDataset, cache_dir: Path
                 ) -> tuple[torch.Tensor, torch.Tensor, float, bool]:
    """imgcls's one-time decode: (images, labels, seconds, was it a cache hit)."""
    def cached() -> dict[str, int]:
        return {p.name: p.stat().st_mtime_ns for p in cache_dir.glob("decoded-*.pt")}

    before = cached()
    start = time.perf_counter()
    images, labels = decode_to_tensor(dataset, SIZE, cache_dir=cache_dir)
    seconds = time.perf_counter() - start
    return images, labels, seconds, bool(before) and cached() == before
