"""Several labels per image (issue 25): binary cross-entropy against the asymmetric loss on CIFAR
mosaics, and multi-label against single-label training on the same single CIFAR images.

**The mosaics.** ``--mosaics`` (default 20,000) 64x64 images, each a 2x2 grid of 32x32 tiles:
1 to 4 of them CIFAR images of ``--data`` (default ``../shared/data/cifar10``, its ``train/``),
the others a constant grey (128), labelled with the set of classes present (two cats: ``cat``
once). The number of images per mosaic is uniform over 1-4 (exactly a quarter of the mosaics
each, in a seeded order, so N mosaics take 2.5 N images), the tiles' places are seeded random
choices, and the images come from a seeded, class-stratified part of ``--data`` (the same number
of each class, in a seeded order). **A CIFAR image is used in at most one mosaic**, so no image
is shared between training and validation mosaics: 20,000 mosaics use all 50,000 images once.
They are written once, as PNGs under ``--work`` with ``labels.csv`` (``path,tags``) and
``tiles.csv`` (each tile's place, class and source file), in a folder named by the seed, the
count, ``--limit-per-class`` and the source folder, and reused when there. imgcls itself splits
the CSV (``data.val_fraction``, 10% by default, by iterative stratification; ``--seed`` is the
split seed and ``train.seed``).

**The runs.** Each loss of ``--losses`` (``bce``, ``asl`` with imgcls's default gammas and clip)
trains on the mosaics, everything else equal: the bundled ``fast_small`` recipe (fastnet_s, whose
global max-pool takes any input size; SGD lr 1.5 Nesterov, batch 1024, BatchNorm biases at 64x
the lr, linear schedule with warmup over its first 20% of epochs, random crop with padding 2,
flips, flip TTA) at ``transforms.image_size=64`` for ``--epochs`` (default 10), without its label
smoothing (refused for several labels). Per loss: the final epoch's val mAP, micro-F1, subset
(exact-match) accuracy and Hamming loss from ``metrics.jsonl`` (the F1s, subset accuracy and
Hamming loss at the per-class thresholds tuned on those validation images, as imgcls logs them),
the wall time of ``imgcls.api.train`` (setup, decoding and validation in), training images per
second of that wall time, and the median over epochs of imgcls's own ``train_images_per_s`` (the
training passes alone); and ASL - BCE.

**The attributes** (``--attributes [N]``, N default 20,000): N single CIFAR images (seeded,
stratified), labelled with their class and one attribute, ``animal`` (bird, cat, deer, dog,
frog, horse) or ``vehicle`` (airplane, automobile, ship, truck): 12 classes, two labels per
image, in ``attributes-*/labels.csv`` (a draw of its own, seeded by ``--seed`` + 1, not the
mosaics' images). The multi-label run (BCE) trains on that CSV, the
single-label run (cross-entropy) on the same images as a ``train/``, ``val/`` folder of links
laid out from the CSV's split (computed as imgcls computes it, and checked against both runs'
``split.json``): the same training and validation images. Both with fast_small's settings at
32 px, without label smoothing. Compared: each of the 10 CIFAR classes' average precision on the
validation images (scikit-learn's ``average_precision_score``; the single-label run's of
``label == c`` against the softmax probability of c, the multi-label run's against its score of
c), both scored by imgcls's evaluation (``imgcls.deploy.scoring.score``, the flip TTA) of each
run's last checkpoint, then their mean and the difference multi - single.

    python benchmarks/multilabel.py --attributes      # the full measurement (1-2 hours on 2
                                                      # cores: 3 of 4 runs' time are the mosaics)
    python benchmarks/multilabel.py --mosaics 200 --epochs 1 --attributes 200 \\
        --limit-per-class 50                          # a check (half a minute)
    python benchmarks/multilabel.py --losses asl --set optim.asl_gamma_neg=2 --epochs 20

``--set KEY=VALUE`` (repeatable) goes to every run; ``--mosaics 0`` skips the mosaics. Prints
the machine (lscpu's model name), the imgcls commit and the command, a table per part (the
losses side by side; the two runs' per-class APs side by side), then as its last line one JSON
object: ``{"mosaics": {"n", "train", "val", "runs": {"bce": {"map", "micro_f1", "macro_f1",
"subset_accuracy", "hamming_loss", "seconds", "images_per_s", ...}, "asl": ...},
"asl_minus_bce": {...}}, "attributes": {"n", "val", "per_class": {CLASS: {"single", "multi",
"difference"}}, "mean_single", "mean_multi", "mean_difference", ...}, "epochs", "seed", "sets",
"cpu", "commit", "command", "torch", "device", "threads"}``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shlex
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from own_folder import class_files, cpu_model, git_commit
from PIL import Image, ImageOps
from sklearn.metrics import average_precision_score
from tutorial_data import add_data_argument, resolve_folder

from imgcls import api, recipes
from imgcls.config import Config, build_config, load_yaml, parse_override
from imgcls.data import create_datasets
from imgcls.data.pipeline import keep_a_lone_partial_batch
from imgcls.deploy.load import load_model
from imgcls.deploy.scoring import score
from imgcls.errors import ImgclsError
from imgcls.runtime import resolve_device

TILE = 32  # a CIFAR image
GRID = 2  # tiles per side: 64x64 mosaics
SIZE = TILE * GRID
GREY = 128  # an empty tile
PER_MOSAIC = (1, 2, 3, 4)  # images per mosaic, each count a quarter of the mosaics
ANIMAL = ("bird", "cat", "deer", "dog", "frog", "horse")
VEHICLE = ("airplane", "automobile", "ship", "truck")
LOSSES = ("bce", "asl")
RECIPE = "fast_small"
WARMUP_SHARE = 0.2  # fast_small's 4 warmup epochs of 20
METRICS = (  # (metrics.jsonl key, JSON key, label)
    ("val_map", "map", "val mAP"),
    ("val_micro_f1", "micro_f1", "micro-F1"),
    ("val_macro_f1", "macro_f1", "macro-F1"),
    ("val_acc", "subset_accuracy", "subset accuracy"),
    ("val_hamming_loss", "hamming_loss", "Hamming loss"),
)


# --------------------------------------------------------------------------- the source images


def attribute(cls: str) -> str:
    """``animal`` or ``vehicle`` for a CIFAR-10 class name."""
    if cls in ANIMAL:
        return "animal"
    if cls in VEHICLE:
        return "vehicle"
    raise SystemExit(f"class {cls!r} is not a CIFAR-10 class: the attributes need "
                     f"{', '.join(sorted(ANIMAL + VEHICLE))}")


def source_key(folder: Path, limit: int | None) -> str:
    """What names a data folder made from ``folder``: its path's hash and the limit."""
    tag = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:8]
    return (f"-limit{limit}" if limit is not None else "") + f"-{tag}"


def per_class_order(files: dict[str, list[Path]], seed: int,
                    limit: int | None) -> dict[str, list[Path]]:
    """Each class's files in a seeded order (class k's generator: ``(seed, k)``), at most
    ``limit`` of them."""
    return {cls: [paths[i] for i in np.random.default_rng([seed, k]).permutation(len(paths))]
            [:limit] for k, (cls, paths) in enumerate(files.items())}


def capacity(files: dict[str, list[Path]], limit: int | None) -> int:
    """How many images a stratified pick can take: as many of each class as the smallest has."""
    return len(files) * min(min(len(paths), limit or len(paths)) for paths in files.values())


def stratified_pick(files: dict[str, list[Path]], n: int, seed: int,
                    limit: int | None) -> list[tuple[Path, str]]:
    """``n`` distinct (file, class): the first ``n // K`` of each class's seeded order (one more
    for the first ``n % K`` classes), then all of them in one seeded order."""
    order = per_class_order(files, seed, limit)
    k = len(order)
    picked = [(path, cls) for i, (cls, paths) in enumerate(order.items())
              for path in paths[:n // k + (i < n % k)]]
    if len(picked) < n:
        raise SystemExit(f"{n} images asked for, the classes of the source hold {len(picked)} "
                         "(fewer of some class)")
    return [picked[i] for i in np.random.default_rng([seed, k, n]).permutation(n)]


def tile(path: Path) -> np.ndarray:
    """A source image as 32x32 RGB (CIFAR's already are; another size is centre-fitted)."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (TILE, TILE):
            im = ImageOps.fit(im, (TILE, TILE), Image.Resampling.BICUBIC)
        return np.asarray(im)


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def tiles_needed(n: int) -> int:
    """Images that ``n`` mosaics take: the counts 1, 2, 3, 4 repeated."""
    return int(np.resize(PER_MOSAIC, n).sum())


# --------------------------------------------------------------------------- the mosaics


def most_mosaics(files: dict[str, list[Path]], limit: int | None) -> int:
    """The most mosaics the source can fill without using an image twice."""
    n = int(capacity(files, limit) / np.mean(PER_MOSAIC))
    while n > 0 and tiles_needed(n) > capacity(files, limit):
        n -= 1
    return n


def build_mosaics(data: Path, work: Path, n: int, seed: int, limit: int | None = None) -> Path:
    """``n`` mosaics of ``data``'s class folders under ``work/mosaics-seed<S>-n<N>...``, written
    once (in a ``.part`` folder renamed when complete) and reused; returns its ``labels.csv``.

    Mosaic i has ``counts[i]`` images (1-4, a seeded permutation of 1, 2, 3, 4 repeated) at
    seeded distinct places of the 2x2 grid (row-major: 0 top left, 3 bottom right), taken in
    turn from one seeded, class-stratified list of distinct images; the other places are grey.
    """
    out = work / f"mosaics-seed{seed}-n{n}{source_key(data, limit)}"
    if (out / "labels.csv").is_file():
        return out / "labels.csv"
    files = class_files(data)
    rng = np.random.default_rng(seed)
    counts = rng.permutation(np.resize(PER_MOSAIC, n))
    sources = iter(stratified_pick(files, int(counts.sum()), seed, limit))
    part = out.with_name(out.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    (part / "images").mkdir(parents=True)
    labels: list[list[str]] = []
    tiles: list[list[str]] = []
    for i, count in enumerate(counts):
        canvas = np.full((SIZE, SIZE, 3), GREY, np.uint8)
        name = f"images/{i:05d}.png"
        present: set[str] = set()
        for place in sorted(rng.choice(GRID * GRID, size=int(count), replace=False).tolist()):
            path, cls = next(sources)
            row, col = divmod(place, GRID)
            canvas[row * TILE:(row + 1) * TILE, col * TILE:(col + 1) * TILE] = tile(path)
            present.add(cls)
            tiles.append([name, str(place), cls, str(path)])
        Image.fromarray(canvas, "RGB").save(part / name)
        labels.append([name, " ".join(sorted(present))])
    write_csv(part / "tiles.csv", ["path", "place", "class", "source"], tiles)
    write_csv(part / "labels.csv", ["path", "tags"], labels)
    shutil.rmtree(out, ignore_errors=True)
    part.rename(out)
    return out / "labels.csv"


# --------------------------------------------------------------------------- the attributes


def build_attributes(data: Path, work: Path, n: int, seed: int,
                     limit: int | None = None) -> Path:
    """``work/attributes-seed<S>-n<N>.../labels.csv``: ``n`` single images of ``data``
    (stratified, seeded; absolute paths), each tagged with its class and its attribute."""
    out = work / f"attributes-seed{seed}-n{n}{source_key(data, limit)}"
    if (out / "labels.csv").is_file():
        return out / "labels.csv"
    picked = stratified_pick(class_files(data), n, seed + 1, limit)  # not the mosaics' images
    out.mkdir(parents=True, exist_ok=True)
    part = out / "labels.csv.part"
    write_csv(part, ["path", "tags"],
              [[str(path.resolve()), f"{cls} {attribute(cls)}"] for path, cls in picked])
    part.rename(out / "labels.csv")
    return out / "labels.csv"


def single_label_folder(split: dict[str, Any], labels_csv: Path, out: Path) -> dict[str, int]:
    """``out/train/<class>/`` and ``out/val/<class>/``: links to the attribute CSV's images as
    its ``split`` (a split.json record) places them, each in its CIFAR class. Rebuilt every run."""
    with labels_csv.open(newline="", encoding="utf-8") as f:
        cls_of = {row["path"]: next(t for t in row["tags"].split() if t not in (
            "animal", "vehicle")) for row in csv.DictReader(f)}
    for part in ("train", "val"):  # imgcls takes no empty class folder
        missing = sorted(set(cls_of.values()) - {cls_of[key] for key in split[part]})
        if missing:
            raise SystemExit(f"the attribute CSV's {part} part has no image of "
                             f"{', '.join(missing)}: use more --attributes images")
    shutil.rmtree(out, ignore_errors=True)
    counts = {}
    for part in ("train", "val"):
        for key in split[part]:
            folder = out / part / cls_of[key]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / Path(key).name).symlink_to(key)
        counts[part] = len(split[part])
    return counts


def same_images(ml_split: dict[str, Any], sl_split: dict[str, Any], part: str) -> bool:
    """Whether the two runs' ``part`` lists the same images: (class, file name) pairs."""
    def pairs(keys: list[str]) -> set[tuple[str, str]]:
        return {(Path(k).parent.name, Path(k).name) for k in keys}
    return pairs(ml_split[part]) == pairs(sl_split[part])


def class_aps(run_dir: Path, classes: list[str], device: str) -> dict[str, float]:
    """Each of ``classes``' average precision on the run's validation images, from its last
    checkpoint scored by imgcls's evaluation: softmax probabilities of a single-label model
    (positives: label == c), logits of a multi-label one (its labels' column c)."""
    loaded = load_model(run_dir / "checkpoints" / "last.pt", device=device)
    scores = score(loaded, split="val")
    labels = scores.labels()
    assert labels is not None
    names = list(scores.classes)
    if labels.ndim == 1:  # one label per image
        probs = scores.probabilities().numpy()
        truth = {c: (labels.numpy() == names.index(c)) for c in classes}
        ranked = {c: probs[:, names.index(c)] for c in classes}
    else:
        logits = scores.logits().double().numpy()
        truth = {c: labels[:, names.index(c)].numpy() > 0.5 for c in classes}
        ranked = {c: logits[:, names.index(c)] for c in classes}
    return {c: float(average_precision_score(truth[c], ranked[c])) for c in classes}


# --------------------------------------------------------------------------- the runs


def run_config(source: Path, work: Path, name: str, image_size: int, epochs: int, seed: int,
               extra: dict[str, Any], loss: str | None = None) -> Config:
    """fast_small's config on ``source``, adapted: no label smoothing, the warmup scaled to
    ``epochs``, ``loss`` (None: imgcls's default for the data)."""
    overrides: dict[str, Any] = {
        "data.source": str(source), "data.root": str(work), "data.val_fraction": 0.1,
        "data.val_split": "holdout", "train.seed": seed, "train.epochs": epochs,
        "transforms.image_size": image_size, "optim.label_smoothing": 0.0,
        "sched.warmup_epochs": round(WARMUP_SHARE * epochs, 3),
        "log.output": str(work / "runs"), "log.name": name, "log.progress": "off",
        "log.tensorboard": False,
    }
    if loss is not None:
        overrides["optim.loss"] = loss
    return build_config(load_yaml(recipes.find(RECIPE)), {**overrides, **extra})


def train(cfg: Config) -> dict[str, Any]:
    """One run: its final epoch's validation figures, wall time and images per second."""
    start = time.perf_counter()
    result = api.train(cfg)
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()
            if line.strip()]
    split = json.loads((result.run_dir / "split.json").read_text())
    n, batch = len(split["train"]), cfg.loader.batch_size
    dropping = keep_a_lone_partial_batch(cfg, n, world_size=1).loader.drop_last
    per_epoch = n // batch * batch if dropping else n
    last = rows[-1] if rows else {}
    figures = {key: last.get(name) for name, key, _ in METRICS} if "val_map" in last else {
        "val_acc": last.get("val_acc"), "macro_f1": last.get("val_macro_f1")}  # one label
    speeds = [r["train_images_per_s"] for r in rows if r.get("train_images_per_s")]
    return {
        **figures,
        "seconds": round(wall, 3), "epochs_run": len(rows),
        "images_trained": per_epoch * len(rows),
        "images_per_s": round(per_epoch * len(rows) / wall, 1) if wall > 0 else None,
        "train_images_per_s": round(float(np.median(speeds)), 1) if speeds else None,
        "train_images": n, "val_images": len(split["val"]),
        "run_dir": str(result.run_dir),
    }


def fmt(value: float | None, digits: int = 4, sign: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def mosaic_table(runs: dict[str, dict[str, Any]]) -> tuple[str, dict[str, float | None]]:
    """The losses side by side (and ASL - BCE when both ran)."""
    both = "bce" in runs and "asl" in runs
    rows = [(label, key, 4) for _, key, label in METRICS]
    rows += [("wall s", "seconds", 1), ("images/s", "images_per_s", 1),
             ("training images/s", "train_images_per_s", 1)]
    head = f"{'':<18}" + "".join(f"{loss:>12}" for loss in runs)
    lines = [head + (f"{'asl - bce':>12}" if both else "")]
    diffs: dict[str, float | None] = {}
    for label, key, digits in rows:
        line = f"{label:<18}" + "".join(f"{fmt(r[key], digits):>12}" for r in runs.values())
        if both:
            diffs[key] = difference(runs["asl"][key], runs["bce"][key])
            line += f"{fmt(diffs[key], digits, sign=True):>12}"
        lines.append(line)
    return "\n".join(lines), diffs


def attributes_table(single: dict[str, float], multi: dict[str, float]) -> str:
    lines = [f"{'class':<12}{'single-label AP':>17}{'multi-label AP':>16}{'multi - single':>16}"]
    for c in single:
        lines.append(f"{c:<12}{single[c]:>17.4f}{multi[c]:>16.4f}"
                     f"{multi[c] - single[c]:>+16.4f}")
    ms, mm = float(np.mean(list(single.values()))), float(np.mean(list(multi.values())))
    lines.append(f"{'mean':<12}{ms:>17.4f}{mm:>16.4f}{mm - ms:>+16.4f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--work", type=Path, default=Path("/tmp/imgcls-multilabel"),
                        help="mosaics, attribute CSVs and run folders (default %(default)s)")
    parser.add_argument("--mosaics", type=int, default=20_000,
                        help="mosaics to build and train on (default 20,000; 0: none)")
    parser.add_argument("--epochs", type=int, default=10, help="train.epochs of every run")
    parser.add_argument("--losses", default=",".join(LOSSES),
                        help="comma-separated: bce, asl (default both)")
    parser.add_argument("--attributes", type=int, nargs="?", const=20_000, default=None,
                        metavar="N", help="also compare multi- and single-label training on N "
                        "single images labelled with class + animal/vehicle (default N 20,000)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the mosaics, the attribute images, the splits and training")
    parser.add_argument("--limit-per-class", type=int, default=None,
                        help="use at most this many images of each class (a quick check)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every run (repeatable)")
    args = parser.parse_args(argv)
    args.losses = [s.strip() for s in args.losses.split(",") if s.strip()]
    bad = [loss for loss in args.losses if loss not in LOSSES]
    if bad or (args.mosaics and not args.losses):
        parser.error(f"--losses: expected a comma-separated subset of {', '.join(LOSSES)}")
    if args.mosaics < 0 or args.epochs < 1 or (args.attributes is not None
                                               and args.attributes < 10):
        parser.error("--mosaics >= 0, --epochs >= 1 and --attributes >= 10")
    if not args.mosaics and args.attributes is None:
        parser.error("nothing to do: --mosaics 0 and no --attributes")
    try:
        args.extra = dict(parse_override(s) for s in args.sets)
    except ImgclsError as exc:
        parser.error(str(exc))
    args.data = resolve_folder(args.data)
    if not args.data.is_dir():
        parser.error(f"--data: no folder {args.data}")
    args.work = args.work.expanduser().resolve()
    return args


def run_mosaics(args: argparse.Namespace, stamp: str) -> dict[str, Any]:
    files = class_files(args.data)
    n = min(args.mosaics, most_mosaics(files, args.limit_per_class))
    if n < args.mosaics:
        print(f"--mosaics {args.mosaics}: the source holds images for {n} mosaics without "
              "using an image twice; building those", flush=True)
    start = time.perf_counter()
    labels = build_mosaics(args.data, args.work, n, args.seed, args.limit_per_class)
    print(f"mosaics: {n} in {labels.parent} ({time.perf_counter() - start:.1f}s to build or "
          "find)", flush=True)
    configs = {loss: run_config(labels, args.work, f"mosaics-{loss}-{stamp}", SIZE, args.epochs,
                                args.seed, args.extra, loss) for loss in args.losses}
    runs: dict[str, dict[str, Any]] = {}
    for loss, cfg in configs.items():
        print(f"\n== mosaics, {loss}: {RECIPE} at {SIZE} px, {args.epochs} epochs", flush=True)
        runs[loss] = train(cfg)
        print(f"{loss}: {runs[loss]['seconds']:.1f}s, val mAP {fmt(runs[loss]['map'])}, run "
              f"folder {runs[loss]['run_dir']}", flush=True)
    text, diffs = mosaic_table(runs)
    first = next(iter(runs.values()))
    print(f"\nmosaics: {n} ({first['train_images']} train / {first['val_images']} val), "
          f"{RECIPE} (fastnet_s) at {SIZE} px, {args.epochs} epochs, the last epoch's figures")
    print(text, flush=True)
    out: dict[str, Any] = {"n": n, "train": first["train_images"], "val": first["val_images"],
                           "folder": str(labels.parent), "runs": runs}
    if diffs:
        out["asl_minus_bce"] = diffs
    return out


def run_attributes(args: argparse.Namespace, stamp: str) -> dict[str, Any]:
    files = class_files(args.data)
    n = min(args.attributes, capacity(files, args.limit_per_class))
    labels = build_attributes(args.data, args.work, n, args.seed, args.limit_per_class)
    multi_cfg = run_config(labels, args.work, f"attributes-multi-{stamp}", TILE, args.epochs,
                           args.seed, args.extra, "bce")
    split = create_datasets(multi_cfg.data, multi_cfg.train.seed).split_record
    folder = args.work / f"attributes-single-{stamp}"
    counts = single_label_folder(split, labels, folder)
    print(f"\nattributes: {n} images in {labels} ({counts['train']} train / {counts['val']} "
          f"val; single-label folder {folder})", flush=True)
    single_cfg = run_config(folder, args.work, f"attributes-single-{stamp}", TILE, args.epochs,
                            args.seed, args.extra)
    runs: dict[str, dict[str, Any]] = {}
    for kind, cfg in (("multi", multi_cfg), ("single", single_cfg)):
        print(f"\n== attributes, {kind}-label: {RECIPE} at {TILE} px, {args.epochs} epochs",
              flush=True)
        runs[kind] = train(cfg)
        print(f"{kind}: {runs[kind]['seconds']:.1f}s, run folder {runs[kind]['run_dir']}",
              flush=True)
    splits = {k: json.loads((Path(r["run_dir"]) / "split.json").read_text())
              for k, r in runs.items()}
    same = {part: same_images(split, splits["single"], part) and
            sorted(splits["multi"][part]) == sorted(split[part]) for part in ("train", "val")}
    if not all(same.values()):
        print(f"warning: the two runs' splits differ ({same}); their APs are each on its own "
              "validation images", flush=True)
    classes = sorted(files)
    device = str(resolve_device(multi_cfg.train.device))
    single = class_aps(Path(runs["single"]["run_dir"]), classes, device)
    multi = class_aps(Path(runs["multi"]["run_dir"]), classes, device)
    print(f"\nattributes: per-class AP on the {counts['val']} validation images (last epoch, "
          f"flip TTA as trained); single-label val accuracy {fmt(runs['single']['val_acc'])}, "
          f"multi-label val mAP (12 labels) {fmt(runs['multi']['map'])}")
    print(attributes_table(single, multi), flush=True)
    mean_single, mean_multi = float(np.mean(list(single.values()))), float(
        np.mean(list(multi.values())))
    return {
        "n": n, "train": counts["train"], "val": counts["val"], "csv": str(labels),
        "same_split": same, "runs": runs,
        "per_class": {c: {"single": single[c], "multi": multi[c],
                          "difference": multi[c] - single[c]} for c in classes},
        "mean_single": mean_single, "mean_multi": mean_multi,
        "mean_difference": mean_multi - mean_single,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", *sys.argv]) if argv is None else shlex.join(argv)
    commit, cpu = git_commit(), cpu_model()
    print(f"imgcls {commit}; CPU: {cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); load average {os.getloadavg()[0]:.2f}")
    print(f"command: {command}")
    print(f"data: {args.data}; work: {args.work}; seed {args.seed}"
          + (f"; --set {' '.join(args.sets)}" if args.sets else ""), flush=True)
    if args.attributes is not None:  # before anything trains
        for cls in class_files(args.data):
            attribute(cls)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out: dict[str, Any] = {}
    if args.mosaics:
        out["mosaics"] = run_mosaics(args, stamp)
    if args.attributes is not None:
        out["attributes"] = run_attributes(args, stamp)
    device = str(resolve_device(args.extra.get("train.device", "auto")))
    out.update({"epochs": args.epochs, "seed": args.seed, "losses": args.losses,
                "limit_per_class": args.limit_per_class, "sets": args.sets, "recipe": RECIPE,
                "cpu": cpu, "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                "commit": commit, "command": command, "torch": str(torch.__version__),
                "device": device, "load": os.getloadavg()})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
