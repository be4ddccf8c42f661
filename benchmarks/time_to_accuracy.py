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
recipe's final and best val_acc, total time, training images per second end to end (setup and
validation in) and the process's user CPU seconds and system share during the run
(``getrusage``), then as its last line one JSON object:
``{"fast": {"85": {"seconds", "epochs"}, ..., "94": ..., "best_val_acc", "final_val_acc",
"total_seconds", "epochs_run", "images_trained", "images_per_s", "cpu": {"user_s", "sys_s",
"sys_share", "img_per_cpu_s", ...}, ...}, "simple_v3_seed": {...}, "device": ...}``.

``--peer airbench94`` also trains airbench94 (the ``airbench`` package, ``pip install -e
".[bench]"``; its own code and hyperparameters, shimmed only to find these images and, off CUDA,
to run on the CPU: see ``benchmarks/peers/airbench94.py``) in the same invocation, on the same
training images and validation split: the data imgcls's folder source and split make
(``create_datasets``, the same seed and fraction; checked against each run's ``split.json``),
decoded by the same cached ``decode_to_tensor`` before anything is timed, so neither side pays
the one-time decode. Its ``elapsed_s`` counts, like imgcls's, from before the data is loaded to
the end of each epoch's validation. Its per-epoch accuracy for the thresholds is scored with the
test-time augmentation of the first recipe's ``train.tta`` (``--peer-tta``), airbench's own
untransformed per-epoch accuracy beside it. Then each recipe's ``last.pt`` and the peer's final
model are scored on the validation split without TTA, with flip and with flip + translate, and
the ratios imgcls / peer printed. ``--recipes none --peer airbench94`` runs the peer alone.

    python benchmarks/time_to_accuracy.py --recipes fast --peer airbench94   # both, full data
    python benchmarks/time_to_accuracy.py --recipes fast --peer airbench94 --quick \
        --peer-batch-size 256                                   # 2,000 images, 1 epoch each

``--variant "NAME: KEY=VALUE ..."`` (repeatable) also trains the first recipe with those
overrides, as ``RECIPE+NAME``, in the same invocation: an ablation. Each variant's change in
final and best accuracy (points, also with each TTA) and its time ratio against the recipe itself
are printed after the table, and are under ``"ablation"`` in the JSON.

    python benchmarks/time_to_accuracy.py --recipes fast_small \
        --variant "reflect: transforms.crop_padding_mode=reflect" \
        --variant "lookahead: train.lookahead_every=5" \
        --variant "whiten3: train.whiten_bias_epochs=3"
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from train_throughput import cpu_usage, usage_delta
from tutorial_data import ROOT, add_data_argument, resolve_folder

from imgcls import api
from imgcls.config import Config, build_config, choices, load_yaml, parse_override
from imgcls.data import DataSplit, create_datasets
from imgcls.data.decode_cache import decode_to_tensor
from imgcls.data.folder import scan_folder
from imgcls.data.pipeline import cache_dir as decode_cache
from imgcls.data.pipeline import keep_a_lone_partial_batch
from imgcls.errors import ImgclsError
from imgcls.runtime import keep_freed_memory, resolve_device

RECIPES = {
    "fast": ROOT / "configs/fast.yaml",
    "simple_v3_seed": ROOT / "configs/simple_v3_seed.yaml",
}
THRESHOLDS = (85, 88, 90, 92, 94)
RATIO_THRESHOLDS = (85, 88, 90)
QUICK_IMAGES = 2000
QUICK_EPOCHS = 1
PEERS = ("airbench94",)
TTA_MODES = choices("train.tta")
PEER_SIZE = 32  # airbench94's network takes 32 x 32 images


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


def speed_and_cpu(before: tuple[float, float, int, int], images: int, steps: int,
                  seconds: float) -> dict[str, Any]:
    """Training images per second of the whole run, end to end (setup and validation in), and
    the process's CPU use since ``before`` (``train_throughput.usage_delta``): its system share
    shows memory returned to the OS and faulted back in, and its images per CPU second do not
    depend on what other processes (or the host) took."""
    cpu = {k: round(v, 4) for k, v in usage_delta(before, seconds, steps, images).items()}
    return {"images_trained": images, "images_per_s": round(images / seconds, 1), "cpu": cpu}


def run_recipe(cfg: Config, recipe: Path) -> dict[str, Any]:
    """Train one recipe's config; its threshold times, accuracies and run facts."""
    start, before = time.perf_counter(), cpu_usage()
    result = api.train(cfg)
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()
            if line.strip()]
    split = json.loads((result.run_dir / "split.json").read_text())
    accs = [r["val_acc"] for r in rows if r.get("val_acc") is not None]
    n, batch = len(split["train"]), cfg.loader.batch_size
    dropping = keep_a_lone_partial_batch(cfg, n, world_size=1).loader.drop_last
    per_epoch = n // batch * batch if dropping else n
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
        **speed_and_cpu(before, per_epoch * len(rows), rows[-1]["step"] if rows else 0,
                        result.seconds),
        "batch_size": cfg.loader.batch_size,
        "run_dir": str(result.run_dir),
        "recipe": str(recipe.relative_to(ROOT) if recipe.is_relative_to(ROOT) else recipe),
        "rows": [{"epoch": r["epoch"], "val_acc": r.get("val_acc"),
                  "elapsed_s": round(r["elapsed_s"], 3)} for r in rows],
    })
    return out


# --------------------------------------------------------------------------- the peer


def peer_data(cfg: Config) -> tuple[DataSplit, tuple[torch.Tensor, torch.Tensor],
                                    tuple[torch.Tensor, torch.Tensor]]:
    """The split an imgcls run of ``cfg`` trains on, and its train and validation images decoded
    as that run's device-resident loader decodes them (the same cache entries)."""
    data = create_datasets(cfg.data, cfg.train.seed)
    if data.val is None:
        raise SystemExit("--peer needs a validation split (data.val_fraction > 0)")
    cache = decode_cache(cfg)
    train = decode_to_tensor(data.train, PEER_SIZE, cache_dir=cache)
    val = decode_to_tensor(data.val, PEER_SIZE, cache_dir=cache)
    return data, train, val


def run_peer(name: str, cfg: Config, args: argparse.Namespace, tta: str,
             output: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train the peer on ``cfg``'s split: (its threshold times at ``tta``, rows and final
    accuracies; the split record it trained on)."""
    from peers import airbench94

    start, before = time.perf_counter(), cpu_usage()
    data, train, val = peer_data(cfg)
    level = airbench94.TTA_LEVELS[tta]
    result = airbench94.run(
        train, val, list(data.classes), device=resolve_device(cfg.train.device),
        folder=output / f"{name}-data", start=start, epochs=args.peer_epochs,
        batch_size=args.peer_batch_size, tta_level=level, seed=cfg.train.seed)
    # airbench drops each epoch's last partial batch and stops after ceil(steps x epochs) steps
    steps = math.ceil(result["train_images"] // result["batch_size"] * result["epochs"])
    key = "val_acc_tta" if level > 0 else "val_acc"
    scored = [dict(r, val_acc=r[key]) for r in result["rows"]]
    accs = [r["val_acc"] for r in scored]
    out: dict[str, Any] = thresholds(scored)
    out.update({
        "best_val_acc": max(accs) if accs else None,
        "final_val_acc": accs[-1] if accs else None,
        "epochs_run": len(scored),
        "scored_with_tta": tta,
        **result,
        **speed_and_cpu(before, steps * result["batch_size"], steps, result["total_seconds"]),
    })
    return out, data.split_record


def final_tta(run_dir: Path, device: str) -> dict[str, float]:
    """Top-1 of a run's ``last.pt`` on its validation split under each TTA mode."""
    ckpt = run_dir / "checkpoints" / "last.pt"
    return {mode: api.evaluate_checkpoint(ckpt, split="val", device=device, tta=mode,
                                          output=run_dir / "eval" / f"last-val-{mode}")["top1"]
            for mode in TTA_MODES}


def ratios(ours: dict[str, Any], peer: dict[str, Any]) -> dict[str, float | None]:
    """imgcls / peer: seconds to each threshold, total seconds, final accuracies."""
    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 4) if a is not None and b else None

    out = {f"seconds_to_{p}": ratio(ours[str(p)]["seconds"], peer[str(p)]["seconds"])
           for p in RATIO_THRESHOLDS}
    out["total_seconds"] = ratio(ours["total_seconds"], peer["total_seconds"])
    out["images_per_s"] = ratio(ours.get("images_per_s"), peer.get("images_per_s"))
    out["final_val_acc"] = ratio(ours["final_val_acc"], peer["final_val_acc"])
    for mode in TTA_MODES:
        out[f"final_acc_{mode}"] = ratio(ours.get("final_tta", {}).get(mode),
                                         peer["final"].get(mode))
    return out


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``"NAME: KEY=VALUE KEY=VALUE"`` -> (NAME, overrides)."""
    name, colon, rest = text.partition(":")
    name = name.strip()
    if not colon or not name or not rest.split() or any(c in name for c in "/+, "):
        raise SystemExit(f"--variant {text!r}: expected 'NAME: KEY=VALUE ...' (NAME without "
                         "spaces, '/', '+' or ',')")
    try:
        return name, dict(parse_override(word) for word in rest.split())
    except ImgclsError as exc:
        raise SystemExit(f"--variant {text!r}: {exc}") from None


def ablation(results: dict[str, dict[str, Any]], base: str,
             variants: list[str]) -> dict[str, dict[str, float | None]]:
    """Each variant against its recipe: accuracy changes in points, time as a ratio."""
    def delta(a: float | None, b: float | None) -> float | None:
        return round(100 * (a - b), 2) if a is not None and b is not None else None

    ours = results[base]
    out: dict[str, dict[str, float | None]] = {}
    for name in variants:
        r = results[name]
        row = {"final_val_acc_points": delta(r["final_val_acc"], ours["final_val_acc"]),
               "best_val_acc_points": delta(r["best_val_acc"], ours["best_val_acc"])}
        for mode in TTA_MODES:
            row[f"final_acc_{mode}_points"] = delta(r.get("final_tta", {}).get(mode),
                                                    ours.get("final_tta", {}).get(mode))
        row["total_seconds_ratio"] = (round(r["total_seconds"] / ours["total_seconds"], 4)
                                      if ours["total_seconds"] else None)
        out[name] = row
    return out


def ablation_table(rows: dict[str, dict[str, float | None]], base: str) -> str:
    def cell(v: float | None) -> str:
        return "-" if v is None else f"{v:+.2f}"

    head = (f"{'variant of ' + base:<32}{'final':>8}{'best':>8}"
            + "".join(f"{m:>16}" for m in TTA_MODES) + f"{'time':>8}")
    lines = [head + "   (accuracy: points against the recipe; time: ratio)"]
    for name, r in rows.items():
        ratio = r["total_seconds_ratio"]
        lines.append(f"{name:<32}{cell(r['final_val_acc_points']):>8}"
                     f"{cell(r['best_val_acc_points']):>8}"
                     + "".join(f"{cell(r[f'final_acc_{m}_points']):>16}" for m in TTA_MODES)
                     + f"{'-' if ratio is None else f'{ratio:.3f}x':>8}")
    return "\n".join(lines)


def epoch_table(results: dict[str, dict[str, Any]], peer_name: str) -> str:
    """Per epoch: each run's val_acc and elapsed seconds, side by side."""
    peer = results[peer_name]
    names = [n for n in results if n != peer_name]
    epochs = max([len(results[n].get("rows", [])) for n in names] + [len(peer["rows"])])
    head = f"{'epoch':>5}" + "".join(f"{n[:22]:>24}" for n in names)
    head += f"{peer_name + ' (' + peer['scored_with_tta'] + ')':>30}{'(no TTA)':>10}"
    lines = [head]
    for e in range(epochs):
        line = f"{e + 1:>5}"
        for n in names:
            rows = results[n].get("rows", [])
            line += (f"{rows[e]['val_acc']:>14.4f}{rows[e]['elapsed_s']:>9.0f}s" if e < len(rows)
                     else f"{'-':>24}")
        if e < len(peer["rows"]):
            r = peer["rows"][e]
            line += f"{r.get('val_acc_tta', r['val_acc']):>20.4f}{r['elapsed_s']:>9.0f}s"
            line += f"{r['val_acc']:>10.4f}"
        lines.append(line)
    return "\n".join(lines)


def table(results: dict[str, dict[str, Any]]) -> str:
    def cell(hit: dict[str, Any]) -> str:
        return "-" if hit["seconds"] is None else f"{hit['seconds']:.0f}s/{hit['epochs']}ep"

    head = f"{'recipe':<24}" + "".join(f"{str(p) + '%':>12}" for p in THRESHOLDS)
    head += f"{'final':>8}{'best':>8}{'epochs':>8}{'total s':>10}{'img/s':>8}{'user s':>9}"
    head += f"{'sys':>7}"
    lines = [head]
    for name, r in results.items():
        final = f"{r['final_val_acc']:.4f}" if r["final_val_acc"] is not None else "-"
        best = f"{r['best_val_acc']:.4f}" if r["best_val_acc"] is not None else "-"
        speed = "-" if r.get("images_per_s") is None else f"{r['images_per_s']:.0f}"
        cpu = r.get("cpu") or {}
        share = cpu.get("sys_share")
        lines.append(f"{name:<24}" + "".join(f"{cell(r[str(p)]):>12}" for p in THRESHOLDS)
                     + f"{final:>8}{best:>8}{r['epochs_run']:>8}{r['total_seconds']:>10.1f}"
                     + f"{speed:>8}{cpu.get('user_s', 0):>9.0f}"
                     + f"{'-' if share is None else f'{100 * share:.1f}%':>7}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--recipes", default=",".join(RECIPES),
                        help=f"comma-separated: {', '.join(RECIPES)} or paths to .yaml recipes "
                             "(none: the peer alone)")
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
    parser.add_argument("--variant", dest="variants", action="append", default=[],
                        metavar="'NAME: KEY=VALUE ...'",
                        help="also train the first recipe with these overrides, as RECIPE+NAME "
                             "(repeatable): an ablation, reported against the recipe")
    parser.add_argument("--peer", choices=PEERS, default=None,
                        help="also train this peer on the same images and split (needs the "
                             "bench extra: pip install -e '.[bench]')")
    parser.add_argument("--peer-epochs", type=float, default=None,
                        help=f"the peer's epochs (default: its own, 9.9; --quick: {QUICK_EPOCHS})")
    parser.add_argument("--peer-batch-size", type=int, default=None,
                        help="the peer's batch size (default: its own, 1024)")
    parser.add_argument("--peer-tta", choices=("auto", *TTA_MODES), default="auto",
                        help="the peer's per-epoch scoring for the thresholds (default auto: "
                             "the first recipe's train.tta)")
    parser.add_argument("--output", type=Path, default=None,
                        help="run folders go here (default: a new folder in the temp dir)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="data.root, where decoded images are cached "
                             "(default: <temp>/imgcls-benchmark-cache)")
    args = parser.parse_args()
    if os.environ.get("IMGCLS_MALLOPT", "1") != "0":  # as `imgcls train` does (both sides)
        keep_freed_memory()

    recipes: dict[str, Path] = {}
    for item in (s.strip() for s in args.recipes.split(",")):
        if not item or item == "none":
            continue
        if item in RECIPES:
            recipes[item] = RECIPES[item]
        elif item.endswith((".yaml", ".yml")) and Path(item).is_file():
            recipes[Path(item).stem] = Path(item).resolve()
        else:
            parser.error(f"unknown recipe {item!r}: expected {', '.join(RECIPES)} or a .yaml")
    if not recipes and not args.peer:
        parser.error("--recipes names no recipe")
    if args.variants and not recipes:
        parser.error("--variant needs a recipe to vary (--recipes)")
    base = next(iter(recipes), "")
    variant_overrides: dict[str, dict[str, Any]] = {}
    for text in args.variants:
        vname, changes = parse_variant(text)
        variant_overrides[f"{base}+{vname}"] = changes
    for vname in variant_overrides:
        recipes[vname] = recipes[base]
    if args.quick and args.peer_epochs is None:
        args.peer_epochs = QUICK_EPOCHS
    epochs = parse_epochs(args.epochs, list(recipes))
    for vname in variant_overrides:  # a variant trains as long as its recipe unless told
        if vname not in epochs and base in epochs:
            epochs[vname] = epochs[base]
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
    data_overrides: dict[str, Any] = {
        "data.source": str(source),
        "data.root": str(cache_dir),
        "data.val_fraction": 0.1,
        "data.val_split": "holdout",  # the seed recipes validate on the test split
        "train.seed": 0,
    }
    for name, recipe in recipes.items():  # every config checked before anything trains
        overrides: dict[str, Any] = {
            **data_overrides,
            "log.output": str(output),
            "log.name": f"{name}-{stamp}",
            "log.progress": "off",
            "log.tensorboard": False,
        }
        if name.split("+")[0] in minutes:
            overrides["train.max_minutes"] = minutes[name.split("+")[0]]
        if name in epochs:
            overrides["train.epochs"] = epochs[name]
        overrides.update(extra)
        overrides.update(variant_overrides.get(name, {}))
        try:
            configs[name] = build_config(load_yaml(recipe), overrides), overrides
            device = str(resolve_device(configs[name][0].train.device))
        except ImgclsError as exc:
            parser.error(f"{name}: {exc}")
    peer_cfg: Config | None = None
    peer_tta = args.peer_tta
    if args.peer:
        try:  # the first recipe's data settings (with --set), or the defaults with this data
            peer_cfg = (next(iter(configs.values()))[0] if configs else
                        build_config(overrides={**data_overrides, **extra}))
            device = str(resolve_device(peer_cfg.train.device))
        except ImgclsError as exc:
            parser.error(f"{args.peer}: {exc}")
        if peer_tta == "auto":
            peer_tta = peer_cfg.train.tta if configs else "none"
        start = time.perf_counter()
        peer_data(peer_cfg)  # the one-time decode, cached for both sides, before any clock
        print(f"decoded (or found cached) the split's images in "
              f"{time.perf_counter() - start:.1f}s, before any timed run", flush=True)

    results: dict[str, dict[str, Any]] = {}
    for name, (cfg, overrides) in configs.items():
        print(f"\n== {name}: {recipes[name]} with "
              + " ".join(f"{k}={v}" for k, v in overrides.items() if k not in (
                  "log.output", "log.name", "data.root")), flush=True)
        results[name] = run_recipe(cfg, recipes[name])
        r = results[name]
        print(f"{name}: {r['epochs_run']} epochs in {r['total_seconds']:.1f}s, best val_acc "
              f"{r['best_val_acc']}, run folder {r['run_dir']}", flush=True)
        if args.peer or variant_overrides:  # untimed: the final weights under each TTA
            r["final_tta"] = final_tta(Path(r["run_dir"]), cfg.train.device)
            print(f"{name} final val_acc by TTA: " + ", ".join(
                f"{m} {a:.4f}" for m, a in r["final_tta"].items()), flush=True)

    out: dict[str, Any] = {}
    if variant_overrides:
        out["ablation"] = ablation(results, base, list(variant_overrides))
    if args.peer and peer_cfg is not None:
        print(f"\n== {args.peer} (its own hyperparameters"
              + (f"; epochs {args.peer_epochs:g}" if args.peer_epochs is not None else "")
              + (f", batch {args.peer_batch_size}" if args.peer_batch_size else "")
              + f"; thresholds scored with TTA {peer_tta})", flush=True)
        peer, split_record = run_peer(args.peer, peer_cfg, args, peer_tta, output)
        results[args.peer] = peer
        print(f"{args.peer} final val_acc by TTA: " + ", ".join(
            f"{m} {a:.4f}" for m, a in peer["final"].items()), flush=True)
        same = {}
        for name in recipes:  # the peer's images are the ones each imgcls run listed
            record = json.loads((Path(results[name]["run_dir"]) / "split.json").read_text())
            same[name] = (record["train"] == split_record["train"]
                          and record["val"] == split_record["val"])
            if not same[name]:
                print(f"warning: {name}'s split.json differs from the peer's split", flush=True)
        peer["same_split_as"] = same
        out["ratios"] = {name: ratios(results[name], peer) for name in recipes}
        print()
        print(epoch_table(results, args.peer))

    print()
    print(table(results))
    if variant_overrides:
        print()
        print(ablation_table(out["ablation"], base))
    for name, r in out.get("ratios", {}).items():
        print(f"{name} / {args.peer}: " + ", ".join(
            f"{k} {'-' if v is None else f'{v:.3f}'}" for k, v in r.items()))
    out = {**results, **out}
    out["device"] = device
    out["quick"] = args.quick
    print(json.dumps(out))


if __name__ == "__main__":
    main()
