"""Wall time and epochs to reach 85, 88, 90, 92 and 94% validation accuracy, per training recipe,
each run end to end through ``imgcls.api.train`` (what ``imgcls train --config ...`` does).

The data: the training images of ``--data`` (50,000 for CIFAR-10), of which a fixed, stratified
10% (5,000 images) is held out for validation: imgcls's folder source with
``data.val_fraction=0.1`` and ``train.seed=0`` draws that split (the same one every run) and writes
it to the run's ``split.json``. The recipes: ``configs/fast.yaml`` (fastnet; its own epochs, with
``train.max_minutes=--fast-minutes`` as a safety cap) and ``configs/simple_v3_seed.yaml`` (seed
001's recipe; ``train.max_minutes=--simple-minutes``: as many epochs as fit in that time; imgcls
stops after the epoch that ends past it, so that last epoch counts too).

A threshold's seconds is the ``elapsed_s`` (wall time since ``api.train`` was called: setup,
decoding, training and validation included) of the first epoch whose ``val_acc`` reaches it, from
the run's ``metrics.jsonl``; null where no epoch reaches it. Decoded images are cached in
``--cache-dir`` (``data.root``), so a second run skips the decode.

    python benchmarks/time_to_accuracy.py            # both recipes on ../shared/data/cifar10
                                                     # (an hour or more on 2 cores)
    python benchmarks/time_to_accuracy.py --quick    # 2,000 images, 1 epoch each (about a minute)
    python benchmarks/time_to_accuracy.py --recipes fast --epochs 8 --set train.tta=none \\
        --data PATH --output DIR --cache-dir DIR

``--data`` is a folder of class folders or a folder holding ``train/`` (its class folders; a
``val/`` or ``test/`` beside it is not used). ``--quick`` trains on a stratified subset (a list
file of the chosen images). Prints a table (recipe x threshold: seconds / epochs) with each
recipe's final and best val_acc and total time, then as its last line one JSON object:
``{"fast": {"85": {"seconds", "epochs"}, ..., "94": ..., "best_val_acc", "final_val_acc",
"total_seconds", "epochs_run", ...}, "simple_v3_seed": {...}, "device": ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from tutorial_data import ROOT, add_data_argument, resolve_folder

from imgcls import api
from imgcls.config import Config, build_config, load_yaml, parse_override
from imgcls.data.folder import scan_folder
from imgcls.errors import ImgclsError
from imgcls.runtime import resolve_device

RECIPES = {
    "fast": ROOT / "configs/fast.yaml",
    "simple_v3_seed": ROOT / "configs/simple_v3_seed.yaml",
}
THRESHOLDS = (85, 88, 90, 92, 94)
QUICK_IMAGES = 2000
QUICK_EPOCHS = 1


def quick_list_file(folder: Path, images: int, out: Path) -> tuple[Path, int]:
    """A list file of a stratified, seeded subset of about ``images`` of ``folder``'s images
    (absolute paths, class names as labels); returns (its path, images listed)."""
    samples, classes = scan_folder(folder)
    by_class: dict[int, list[str]] = {k: [] for k in range(len(classes))}
    for path, label in samples:
        by_class[label].append(path)
    per_class = max(1, images // max(len(classes), 1))
    g = torch.Generator().manual_seed(0)
    lines = ["# a stratified subset for benchmarks/time_to_accuracy.py --quick"]
    for label, paths in by_class.items():
        order = torch.randperm(len(paths), generator=g)[:per_class].tolist()
        lines += [f"{paths[i]} {classes[label]}" for i in sorted(order)]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out, len(lines) - 1


def parse_epochs(text: str | None, recipes: list[str]) -> dict[str, int]:
    """``--epochs 5`` (every recipe) or ``--epochs fast=5,simple_v3_seed=10``."""
    if not text:
        return {}
    if "=" not in text:
        return dict.fromkeys(recipes, int(text))
    out = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        if name.strip() not in recipes:
            raise SystemExit(f"--epochs names {name.strip()!r}, not one of {', '.join(recipes)}")
        out[name.strip()] = int(value)
    return out


def thresholds(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | int | None]]:
    """Per threshold: the elapsed seconds and epoch of the first epoch that reaches it."""
    out: dict[str, dict[str, float | int | None]] = {}
    for pct in THRESHOLDS:
        hit = next((r for r in rows if r.get("val_acc") is not None
                    and r["val_acc"] >= pct / 100), None)
        out[str(pct)] = {"seconds": round(hit["elapsed_s"], 6) if hit else None,
                         "epochs": int(hit["epoch"]) if hit else None}
    return out


def run_recipe(cfg: Config, recipe: Path) -> dict[str, Any]:
    """Train one recipe's config; its threshold times, accuracies and run facts."""
    start = time.perf_counter()
    result = api.train(cfg)
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()
            if line.strip()]
    split = json.loads((result.run_dir / "split.json").read_text())
    accs = [r["val_acc"] for r in rows if r.get("val_acc") is not None]
    out: dict[str, Any] = thresholds(rows)
    out.update({
        "best_val_acc": max(accs) if accs else None,
        "final_val_acc": accs[-1] if accs else None,
        "total_seconds": round(result.seconds, 6),
        "wall_seconds": round(wall, 6),
        "epochs_run": len(rows),
        "epochs_planned": cfg.train.epochs,
        "max_minutes": cfg.train.max_minutes,
        "seconds_per_epoch": round(rows[-1]["elapsed_s"] / len(rows), 3) if rows else None,
        "train_images": len(split["train"]),
        "val_images": len(split["val"]),
        "batch_size": cfg.loader.batch_size,
        "run_dir": str(result.run_dir),
        "recipe": str(recipe.relative_to(ROOT) if recipe.is_relative_to(ROOT) else recipe),
    })
    return out


def table(results: dict[str, dict[str, Any]]) -> str:
    def cell(hit: dict[str, Any]) -> str:
        return "-" if hit["seconds"] is None else f"{hit['seconds']:.0f}s/{hit['epochs']}ep"

    head = f"{'recipe':<16}" + "".join(f"{str(p) + '%':>12}" for p in THRESHOLDS)
    head += f"{'final':>8}{'best':>8}{'epochs':>8}{'total s':>10}"
    lines = [head]
    for name, r in results.items():
        final = f"{r['final_val_acc']:.4f}" if r["final_val_acc"] is not None else "-"
        best = f"{r['best_val_acc']:.4f}" if r["best_val_acc"] is not None else "-"
        lines.append(f"{name:<16}" + "".join(f"{cell(r[str(p)]):>12}" for p in THRESHOLDS)
                     + f"{final:>8}{best:>8}{r['epochs_run']:>8}{r['total_seconds']:>10.1f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--recipes", default=",".join(RECIPES),
                        help=f"comma-separated: {', '.join(RECIPES)} or paths to .yaml recipes")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_IMAGES} images (stratified), {QUICK_EPOCHS} epochs each")
    parser.add_argument("--limit", type=int, default=None,
                        help=f"train on a stratified subset of about this many images "
                             f"(--quick: {QUICK_IMAGES})")
    parser.add_argument("--epochs", default=None,
                        help="train.epochs for every recipe (N) or per recipe (fast=N,...); "
                             f"--quick: {QUICK_EPOCHS}")
    parser.add_argument("--simple-minutes", type=float, default=30.0,
                        help="simple_v3_seed's train.max_minutes (default 30)")
    parser.add_argument("--fast-minutes", type=float, default=90.0,
                        help="fast's train.max_minutes, a safety cap (default 90)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every recipe (repeatable)")
    parser.add_argument("--output", type=Path, default=None,
                        help="run folders go here (default: a new folder in the temp dir)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="data.root, where decoded images are cached "
                             "(default: <temp>/imgcls-benchmark-cache)")
    args = parser.parse_args()

    recipes: dict[str, Path] = {}
    for item in (s.strip() for s in args.recipes.split(",")):
        if not item:
            continue
        if item in RECIPES:
            recipes[item] = RECIPES[item]
        elif item.endswith((".yaml", ".yml")) and Path(item).is_file():
            recipes[Path(item).stem] = Path(item).resolve()
        else:
            parser.error(f"unknown recipe {item!r}: expected {', '.join(RECIPES)} or a .yaml")
    if not recipes:
        parser.error("--recipes names no recipe")
    epochs = parse_epochs(args.epochs, list(recipes))
    if args.quick and not args.epochs:
        epochs = dict.fromkeys(recipes, QUICK_EPOCHS)
    try:
        extra = dict(parse_override(s) for s in args.sets)
    except ImgclsError as exc:
        parser.error(str(exc))
    minutes = {"fast": args.fast_minutes, "simple_v3_seed": args.simple_minutes}

    output = (args.output or Path(tempfile.mkdtemp(prefix="imgcls-time-to-accuracy-")))
    output = output.expanduser().resolve()
    output.mkdir(parents=True, exist_ok=True)
    cache_dir = (args.cache_dir or Path(tempfile.gettempdir()) / "imgcls-benchmark-cache")
    cache_dir = cache_dir.expanduser().resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    folder = resolve_folder(args.data)
    limit = args.limit if args.limit is not None else (QUICK_IMAGES if args.quick else None)
    source: Path = folder
    images_note = "all images"
    if limit is not None:
        source, listed = quick_list_file(folder, limit, output / "subset.txt")
        images_note = f"a stratified subset of {listed} images ({source})"
    print(f"data: {folder}, {images_note}; 10% held out for validation (train.seed=0)",
          flush=True)
    print(f"runs in {output}; decode cache in {cache_dir}; {os.cpu_count()} CPUs, torch "
          f"threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}",
          flush=True)

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    configs: dict[str, tuple[Config, dict[str, Any]]] = {}
    device = "cpu"
    for name, recipe in recipes.items():  # every config checked before anything trains
        overrides: dict[str, Any] = {
            "data.source": str(source),
            "data.root": str(cache_dir),
            "data.val_fraction": 0.1,
            "data.val_split": "holdout",  # the seed recipes validate on the test split
            "train.seed": 0,
            "log.output": str(output),
            "log.name": f"{name}-{stamp}",
            "log.progress": "off",
            "log.tensorboard": False,
        }
        if name in minutes:
            overrides["train.max_minutes"] = minutes[name]
        if name in epochs:
            overrides["train.epochs"] = epochs[name]
        overrides.update(extra)
        try:
            configs[name] = build_config(load_yaml(recipe), overrides), overrides
            device = str(resolve_device(configs[name][0].train.device))
        except ImgclsError as exc:
            parser.error(f"{name}: {exc}")

    results: dict[str, dict[str, Any]] = {}
    for name, (cfg, overrides) in configs.items():
        print(f"\n== {name}: {recipes[name]} with "
              + " ".join(f"{k}={v}" for k, v in overrides.items() if k not in (
                  "log.output", "log.name", "data.root")), flush=True)
        results[name] = run_recipe(cfg, recipes[name])
        r = results[name]
        print(f"{name}: {r['epochs_run']} epochs in {r['total_seconds']:.1f}s, best val_acc "
              f"{r['best_val_acc']}, run folder {r['run_dir']}", flush=True)

    print()
    print(table(results))
    out: dict[str, Any] = dict(results)
    out["device"] = device
    out["quick"] = args.quick
    print(json.dumps(out))


if __name__ == "__main__":
    main()
