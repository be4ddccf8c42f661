"""Imbalanced classes: the same small recipe trained three ways on a 10:1 imbalanced digits set,
side by side: plain cross-entropy, ``optim.class_weights=auto`` and ``loader.sampler=balanced``.

The data: the bundled digits' training part (scikit-learn's 8x8 scans, ``--data digits``) with
classes 0-4 whole and classes 5-9 cut to a tenth (a fixed, seeded choice: the same images for
every seed and way), about 720 and 70 images, written as PNGs to ``OUTPUT/data/train/``, and
the digits' balanced test part (359 images, about 36 per class) to ``OUTPUT/data/val/``. Each
way trains ``--model`` for ``--epochs`` on that folder through ``imgcls.api.train`` (what
``imgcls train --data OUTPUT/data`` does), and its last epoch is scored on the test part,
which is the run's validation folder only to be scored: it never picks an epoch or a setting.
Only the training seed (``train.seed``: weights, order, augmentation) changes between
``--seeds``.

    python benchmarks/imbalance.py                       # 3 seeds x 3 ways (a few minutes)
    python benchmarks/imbalance.py --seeds 0 1 --epochs 30 --model simple_v3
    python benchmarks/imbalance.py --quick               # 1 seed, 1 epoch (a minute)

Prints per seed and as the mean over seeds, one column per way: macro-F1, balanced accuracy,
the minority classes' (5-9) mean recall, the majority classes' mean recall and accuracy, then
as its last line one JSON object: ``{"ways": {"none": {"macro_f1", "balanced_acc",
"minority_recall", "majority_recall", "accuracy", "per_seed": [...]}, "class_weights": ...,
"balanced_sampler": ...}, "train_counts": [...], "seeds": [...], "epochs", "model", "device"}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from imgcls import api
from imgcls.config import build_config
from imgcls.data import digits
from imgcls.data.sampling import class_counts
from imgcls.data.splits import LabeledSubset
from imgcls.runtime import resolve_device

WAYS: dict[str, dict[str, Any]] = {
    "none": {},
    "class_weights": {"optim.class_weights": "auto"},
    "balanced_sampler": {"loader.sampler": "balanced"},
}
MINORITY = (5, 6, 7, 8, 9)
KEEP_FRACTION = 0.1  # of each minority class
METRICS = ("macro_f1", "balanced_acc", "minority_recall", "majority_recall", "accuracy")


def write_folder(root: Path, train: LabeledSubset) -> Path:
    """``root/train/<class>/`` (the imbalanced part) and ``root/val/<class>/`` (the test part)
    as 8x8 greyscale PNGs, the pixels ``Digits`` serves."""
    base = train.dataset
    for index in train.indices:
        folder = root / "train" / digits.CLASSES[base.targets[index]]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(base.data[index], "L").save(folder / f"train_{index:04d}.png")
    digits.export_images("test", root / "val")
    return root


def imbalanced_train(keep: float = KEEP_FRACTION, data_seed: int = 0) -> LabeledSubset:
    """The digits' training part with each minority class cut to ``keep`` of its images
    (chosen by a generator seeded with ``(data_seed, class)``, in dataset order)."""
    base = digits.Digits("train")
    labels = np.asarray(base.targets)
    indices: list[int] = []
    for label in range(len(digits.CLASSES)):
        members = np.flatnonzero(labels == label)
        if label in MINORITY:
            n = max(1, round(len(members) * keep))
            members = np.sort(np.random.default_rng([data_seed, label]).choice(
                members, n, replace=False))
        indices += members.tolist()
    return LabeledSubset(base, sorted(indices), base.targets, digits.CLASSES)


def scores(row: dict[str, Any]) -> dict[str, float]:
    """The last epoch's test-part scores from a metrics.jsonl row."""
    recall = {int(name): v["recall"] for name, v in row["val_per_class"].items()}
    majority = [c for c in recall if c not in MINORITY]
    return {
        "macro_f1": row["val_macro_f1"],
        "balanced_acc": row["val_balanced_acc"],
        "minority_recall": statistics.fmean(recall[c] for c in MINORITY),
        "majority_recall": statistics.fmean(recall[c] for c in majority),
        "accuracy": row["val_acc"],
    }


def train_once(way: str, seed: int, args: argparse.Namespace, data: Path,
               output: Path) -> dict[str, float]:
    base_mean, base_std = digits.mean_std(digits.Digits("train"))  # as --data digits does
    overrides = {
        "data.source": str(data),
        "model.name": args.model, "train.epochs": args.epochs, "train.seed": seed,
        "train.device": args.device, "loader.batch_size": args.batch_size,
        "optim.lr": args.lr, "transforms.preset": "digits",
        "transforms.normalize": "custom", "transforms.mean": base_mean,
        "transforms.std": base_std, "data.root": str(args.cache_dir),
        "log.output": str(output), "log.name": f"{way}-seed{seed}", "log.progress": "off",
        "log.tensorboard": False, **WAYS[way],
    }
    start = time.perf_counter()
    result = api.train(build_config(overrides=overrides))
    rows = [json.loads(line) for line in
            (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    return {**scores(rows[-1]), "seconds": time.perf_counter() - start}


def table(title: str, results: dict[str, dict[str, float]]) -> str:
    header = f"{title:<18}" + "".join(f"{way:>18}" for way in results)
    lines = [header]
    for metric in METRICS:
        lines.append(f"{metric:<18}" + "".join(f"{r[metric]:>18.3f}" for r in results.values()))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--model", default="lenet")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--quick", action="store_true", help="1 seed, 1 epoch")
    parser.add_argument("--output", type=Path, default=None,
                        help="run folders go here (default: a new folder in the temp dir)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="data.root, where decoded images are cached (default: the output)")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs = args.seeds[:1], 1
    if args.threads:
        torch.set_num_threads(args.threads)
    output = (args.output or Path(tempfile.mkdtemp(prefix="imgcls-imbalance-"))).resolve()
    output.mkdir(parents=True, exist_ok=True)
    args.cache_dir = (args.cache_dir or output).resolve()

    train, test = imbalanced_train(), digits.Digits("test")
    data = write_folder(output / "data", train)
    counts = class_counts(train.targets, len(digits.CLASSES))
    print(f"train: {len(train)} images, per class {counts}; test: {len(test)} images, per "
          f"class {class_counts(test.targets, len(digits.CLASSES))}")
    print(f"{args.model}, {args.epochs} epochs, batch {args.batch_size}, lr {args.lr}, "
          f"device {resolve_device(args.device)}, seeds {args.seeds}; run folders in {output}")
    per_seed: dict[str, list[dict[str, float]]] = {way: [] for way in WAYS}
    for seed in args.seeds:
        for way in WAYS:
            per_seed[way].append(train_once(way, seed, args, data, output))
        print(table(f"seed {seed}", {way: runs[-1] for way, runs in per_seed.items()}),
              flush=True)
    means = {way: {m: statistics.fmean(r[m] for r in runs) for m in (*METRICS, "seconds")}
             for way, runs in per_seed.items()}
    print(table(f"mean of {len(args.seeds)} seed(s)", means))
    print("seconds per run: " + ", ".join(f"{w} {m['seconds']:.1f}" for w, m in means.items()))
    summary = {
        "ways": {way: {**means[way], "per_seed": per_seed[way]} for way in WAYS},
        "train_counts": counts, "seeds": args.seeds, "epochs": args.epochs,
        "model": args.model, "device": str(resolve_device(args.device)),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
