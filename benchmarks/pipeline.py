"""Augmented images per second delivered to the training loop: the tutorial's DataLoader against
imgcls's device-resident MemoryLoader, on the same images, measured side by side in one run.

The tutorial way: torchvision ``datasets.ImageFolder`` with PIL transforms (``RandomCrop(32,
padding=4)``, ``RandomHorizontalFlip()``, ``ToTensor()``, ``Normalize`` with the CIFAR-10
mean/std) and ``DataLoader(batch_size=64, shuffle=True)``, once with ``num_workers=0`` and once
with ``num_workers=2`` (workers are not persistent, as in the tutorial: every pass starts them,
and that start-up is counted). imgcls: the folder scanned into an ``ImageFileDataset`` (as
``data.source=<folder>`` does), decoded once by ``decode_to_tensor`` into a uint8 tensor (cached
on disk), then ``MemoryLoader`` with the same augmentations (crop padding 4, flip 0.5, CIFAR-10
normalisation), used as the training loop uses it: ``set_epoch`` then one full pass, so the epoch's
up-front work (the permutation, drawing every crop offset and flip, the chunk buffer) is inside the
timed pass and amortised in the images/s figure. The decode is a one-time cost and is reported on
its own (first decode, then a cache hit), not inside the images/s figure.

Every timed pass iterates the whole (sub)set, counts the images actually delivered and touches
every batch (a small reduction kept on the device, read once at the end), so no loader can skip
work. Repeats rotate through the three loaders, so a machine that slows down during the run slows
all of them; medians are reported. On a GPU (the default when there is one; ``--device cpu``
otherwise) imgcls keeps its images there and the tutorial's batches are moved there, as a
training loop would. Torch's thread count is left as it is unless ``--threads`` sets it (on a
machine that other work keeps busy, two-thread tensor ops can stall waiting for a core: compare
with ``--threads 1``).

    python benchmarks/pipeline.py           # all of ../shared/data/cifar10 (50,000 images),
                                            # 5 repeats (about 2 minutes on 2 cores)
    python benchmarks/pipeline.py --quick   # 2,560 images, 3 repeats (well under a minute)
    python benchmarks/pipeline.py --data PATH --repeats 3 --batch-size 128 --cache-dir DIR
    python benchmarks/pipeline.py --threads 1   # steadier on a machine busy with other work

``--data`` is a folder of class folders or a folder holding ``train/`` (its class folders).
Prints a table, then as its last line one JSON object with ``tutorial_img_s`` (the median of the
tutorial's best configuration), ``imgcls_img_s``, ``ratio`` (imgcls / tutorial best) and extras:
``tutorial_nw0_img_s``, ``tutorial_nw2_img_s``, ``decode_s``, ``cache_hit_s``, ``images``, ...
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tutorial_data import (
    CIFAR_MEAN,
    CIFAR_STD,
    add_data_argument,
    pick_samples,
    resolve_folder,
    timed_decode,
    tutorial_loader,
)

from imgcls.data.folder import ImageFileDataset
from imgcls.data.memory import MemoryLoader

QUICK_IMAGES = 2560  # 40 batches of 64

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def timed_pass(batches: Batches, device: torch.device) -> tuple[float, int]:
    """Seconds for one full pass and the number of images delivered.

    Every batch is moved to ``device`` (a no-op where it already is) and touched by a small
    reduction accumulated on the device; the accumulator is read once at the end, which also
    waits for queued GPU work.
    """
    start = time.perf_counter()
    count = 0
    touch = torch.zeros((), device=device)
    for images, labels in batches:
        images = images.to(device)
        labels = labels.to(device)
        if images.shape[0] != labels.shape[0]:
            raise RuntimeError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        touch += images[:, :, 0, 0].sum()
        count += images.shape[0]
    float(touch)  # forces every batch to exist (and the device to finish)
    return time.perf_counter() - start, count


def decode(dataset: ImageFileDataset, cache_dir: Path) -> tuple[torch.Tensor, torch.Tensor,
                                                                 float, float, bool]:
    """(images, labels, first decode seconds, cache hit seconds, was the first call a hit)."""
    images, labels, decode_s, was_hit = timed_decode(dataset, cache_dir)
    again, again_labels, hit_s, _ = timed_decode(dataset, cache_dir)
    if not (torch.equal(again, images) and torch.equal(again_labels, labels)):
        raise RuntimeError("the cached decode differs from the first one")
    return images, labels, decode_s, hit_s, was_hit


def rate(seconds: float, count: int) -> float:
    return count / seconds if seconds > 0 else float("inf")


def table(rows: dict[str, list[float]]) -> str:
    lines = [f"{'loader':<22} {'median img/s':>13} {'min':>10} {'max':>10} {'repeats':>8}"]
    for name, rates in rows.items():
        lines.append(f"{name:<22} {statistics.median(rates):>13,.0f} {min(rates):>10,.0f} "
                     f"{max(rates):>10,.0f} {len(rates):>8}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_IMAGES} images (or fewer) and 3 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="default 5 (--quick: 3)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--limit", type=int, default=None,
                        help=f"use this many images (a seeded subset); --quick: {QUICK_IMAGES}")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="decode cache folder (default: a temporary folder)")
    parser.add_argument("--device", default=None,
                        help="where imgcls keeps the images and batches are delivered "
                             "(default: cuda when available, else cpu)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2],
                        help="tutorial DataLoader num_workers values, one row each")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for the whole run (default: leave it)")
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 5)
    limit = args.limit if args.limit is not None else (QUICK_IMAGES if args.quick else None)
    if repeats < 1 or args.batch_size < 1 or (limit is not None and limit < 1):
        parser.error("--repeats, --batch-size and --limit must be positive")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be positive")
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    folder = resolve_folder(args.data)
    samples, classes, indices, only_one = pick_samples(folder, limit)
    print(f"data: {folder} ({len(samples)} images, {len(classes)} classes"
          + (f"; {only_one} files read by only one of ImageFolder/imgcls left out" if only_one
             else "") + ")", flush=True)
    print(f"batch {args.batch_size}, {repeats} repeats, device {device}, "
          f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs", flush=True)

    dataset = ImageFileDataset(samples, classes, root=str(folder))
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = args.cache_dir.expanduser() if args.cache_dir else Path(tmp)
        images, labels, decode_s, hit_s, was_hit = decode(dataset, cache_dir)
    print(f"imgcls decode_to_tensor: first call {decode_s:.2f}s"
          + (" (already cached)" if was_hit else "") + f", cache hit {hit_s:.2f}s", flush=True)

    memory = MemoryLoader(images, labels, batch_size=args.batch_size, train=True, shuffle=True,
                          seed=0, device=device, mean_std=(CIFAR_MEAN, CIFAR_STD),
                          crop_padding=4, hflip=0.5)
    loaders: dict[str, Batches] = {
        f"tutorial nw={workers}": tutorial_loader(folder, indices, args.batch_size, workers)
        for workers in args.workers
    }
    loaders["imgcls memory"] = memory

    rows: dict[str, list[float]] = {name: [] for name in loaders}
    for r in range(repeats):
        memory.set_epoch(r)  # a new order and new augmentations each pass, as in training
        for name, batches in loaders.items():
            seconds, count = timed_pass(batches, device)
            if count != len(samples):
                raise RuntimeError(f"{name} delivered {count} images, expected {len(samples)}")
            rows[name].append(rate(seconds, count))
            print(f"repeat {r + 1}/{repeats} {name}: {seconds:.2f}s "
                  f"{rows[name][-1]:,.0f} img/s", flush=True)

    print()
    print(table(rows))
    medians = {name: statistics.median(rates) for name, rates in rows.items()}
    tutorial_rows = {n: v for n, v in medians.items() if n.startswith("tutorial")}
    best = max(tutorial_rows, key=lambda n: tutorial_rows[n])
    ours = medians["imgcls memory"]
    print(f"\nimgcls memory / {best}: {ours / tutorial_rows[best]:.2f}x; one-time decode "
          f"{decode_s:.2f}s (cache hit {hit_s:.2f}s) for {len(samples)} images")
    result: dict[str, Any] = {
        "tutorial_img_s": round(tutorial_rows[best], 1),
        "imgcls_img_s": round(ours, 1),
        "ratio": round(ours / tutorial_rows[best], 3),
        "tutorial_best": best.removeprefix("tutorial "),
    }
    for name, value in tutorial_rows.items():
        key = name.removeprefix("tutorial ").replace("=", "")
        result[f"tutorial_{key}_img_s"] = round(value, 1)
    result.update({
        "decode_s": round(decode_s, 6),
        "cache_hit_s": round(hit_s, 6),
        "decode_was_cached": was_hit,
        "images": len(samples),
        "batch_size": args.batch_size,
        "repeats": repeats,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "quick": args.quick,
    })
    print(json.dumps(result))


if __name__ == "__main__":
    main()
