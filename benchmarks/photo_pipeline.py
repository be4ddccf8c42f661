"""Augmented photos per second delivered to the training loop: the DataLoader's per-image
``RandomResizedCrop`` + flip + normalise (what ``data.loader=dataloader`` runs, and what timm's
and torchvision's reference scripts run) against imgcls's photo cache and ``PhotoLoader``, on the
same photos, side by side in one run. No model: this is the input pipeline's own ceiling.

The DataLoader side decodes every photo every pass (``num_workers`` 0 and 2, workers started per
pass as a training epoch starts them). The photo side pays its decode once (reported apart:
the first build, then a cache hit) and then cuts crops from the memory-mapped cache. Passes
rotate through the loaders; medians are reported, with the ratio photo / best DataLoader.

    python benchmarks/photo_pipeline.py --data ../shared/data/flowers            # as they are
    python benchmarks/photo_pipeline.py --data /tmp/ofw_full/phone-flowers-...  # phone size
    python benchmarks/photo_pipeline.py --data DIR --limit 500 --size 128 --repeats 3

Ends with one JSON line (``photo_img_s``, ``dataloader_img_s``, ``ratio``, ``build_s``, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import Subset

from imgcls.config import build_config
from imgcls.data.folder import ImageFileDataset, scan_folder
from imgcls.data.loaders import EpochLoader, TransformedDataset
from imgcls.data.photo_cache import photo_store
from imgcls.data.photo_loader import PhotoAugmentation, PhotoLoader
from imgcls.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform

ROOT = Path(__file__).resolve().parents[1]


def dataset(folder: Path, limit: int | None) -> ImageFileDataset | Subset:
    base = folder / "train" if (folder / "train").is_dir() else folder
    samples, classes = scan_folder(base)
    data = ImageFileDataset(samples, classes, str(base))
    if limit is None or limit >= len(data):
        return data
    pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:limit]
    return Subset(data, sorted(pick.tolist()))


def timed_pass(batches) -> tuple[float, int]:  # noqa: ANN001
    start, count, touch = time.perf_counter(), 0, 0.0
    for images, _ in batches:
        touch += float(images[:, :, 0, 0].sum())
        count += len(images)
    return time.perf_counter() - start, count


def loaders(data, size: int, batch: int, cache: Path, workers: list[int]) -> tuple[dict, dict]:  # noqa: ANN001
    """The loaders by name, and the photo cache's build and hit seconds."""
    cfg = build_config(overrides={"transforms.preset": "imagenet", "loader.batch_size": batch,
                                  "transforms.image_size": size})
    transform = build_transform(cfg.transforms, train=True, image_size=size,
                                mean_std=(IMAGENET_MEAN, IMAGENET_STD), explicit=cfg.explicit)
    found = {}
    for n in workers:
        ld = build_config(overrides={"loader.batch_size": batch, "loader.num_workers": n}).loader
        found[f"dataloader nw={n}"] = EpochLoader(TransformedDataset(data, transform), ld,
                                                  train=True, seed=0)
    side = round(size * 256 / 224)
    start = time.perf_counter()
    store = photo_store(data, side, cache)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    store = photo_store(data, side, cache)
    hit_s = time.perf_counter() - start
    found["photo cache"] = PhotoLoader(store, image_size=size, batch_size=batch,
                                       mean_std=(IMAGENET_MEAN, IMAGENET_STD),
                                       augment=PhotoAugmentation(hflip=0.5))
    return found, {"build_s": build_s, "cache_hit_s": hit_s, "cache_mb": store.nbytes / 2**20}


def cpu_model() -> str:
    """The CPU's model name (lscpu's), for the figures' record."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/flowers")
    p.add_argument("--limit", type=int, default=None, help="a seeded subset of the photos")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = p.parse_args()
    data = dataset(args.data, args.limit)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    print(f"imgcls {commit}; {cpu_model()}, {os.cpu_count()} "
          f"CPUs; torch {torch.__version__}; {len(data)} photos from {args.data}; "
          f"{args.size} px, batch {args.batch_size}")
    with tempfile.TemporaryDirectory() as cache:
        found, extra = loaders(data, args.size, args.batch_size, Path(cache), args.workers)
        print(f"photo cache: built in {extra['build_s']:.1f} s ({extra['cache_mb']:.0f} MB), "
              f"reopened in {extra['cache_hit_s']:.3f} s")
        rates: dict[str, list[float]] = {name: [] for name in found}
        for epoch in range(args.repeats):
            for name, loader in found.items():
                loader.set_epoch(epoch)
                seconds, count = timed_pass(loader)
                rates[name].append(count / seconds)
    medians = {name: statistics.median(r) for name, r in rates.items()}
    print(f"{'loader':<18} {'median img/s':>13} {'min':>8} {'max':>8}")
    for name, r in rates.items():
        print(f"{name:<18} {medians[name]:>13,.0f} {min(r):>8,.0f} {max(r):>8,.0f}")
    best = max(v for k, v in medians.items() if k.startswith("dataloader"))
    ratio = medians["photo cache"] / best
    print(f"photo cache / best DataLoader: {ratio:.1f}x; load average {os.getloadavg()[0]:.2f}")
    print(json.dumps({"photo_img_s": medians["photo cache"], "dataloader_img_s": best,
                      "ratio": ratio, "photos": len(data), "commit": commit, **extra}))


if __name__ == "__main__":
    main()
