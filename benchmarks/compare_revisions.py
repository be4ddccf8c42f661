"""Training speed of this working tree against an earlier revision, measured side by side in one
run: did a change (a refactor of the training core, say) slow ``imgcls train`` down?

The earlier revision's ``src/`` is exported with ``git archive`` into a temporary folder; each
repeat runs ``python -m imgcls train`` once per tree, alternating which goes first (a machine
that slows down slows both), with ``PYTHONPATH`` pointing at that tree's ``src/``. Both train the
same recipe on the same seeded, stratified subset of a folder of class folders (written as a list
file), with the decoded images cached once beforehand, so every timed run starts from the cache.
Optionally each tree's own ``benchmarks/train_throughput.py`` (imgcls's loop against the
tutorial loop) runs too, alternating the same way.

    python benchmarks/compare_revisions.py --base HEAD~1   # fast_small.yaml, 5,000 images,
                                                            # 3 epochs, 2 repeats
    python benchmarks/compare_revisions.py --base d02628c --config configs/simple_v3_seed.yaml \\
        --limit 5000 --epochs 2 --repeats 3 --throughput-steps 40

Prints a table (per tree: median epoch time after the first epoch, training images/s, process
wall time, and the throughput benchmark's imgcls img/s and ratio), then as its last line one JSON
object with the ratios this tree / base (below 1 for times: this tree is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from tutorial_data import ROOT, add_data_argument, pick_samples, resolve_folder


def export_revision(rev: str, dest: Path) -> Path:
    """``git archive REV src benchmarks configs`` unpacked into ``dest``; returns ``dest``."""
    archive = dest.with_suffix(".tar")
    with archive.open("wb") as handle:
        subprocess.run(["git", "archive", rev, "src", "benchmarks", "configs"], cwd=ROOT,
                       stdout=handle, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    archive.unlink()
    return dest


def write_list_file(folder: Path, limit: int | None, path: Path) -> int:
    """A seeded random subset of ``folder``'s images as an imgcls list file (path, class)."""
    samples, classes, _, _ = pick_samples(folder, limit)
    path.write_text("".join(f"{Path(p).resolve()} {classes[y]}\n" for p, y in samples),
                    encoding="utf-8")
    return len(samples)


def holdout_keys(tree: Path) -> list[str]:
    """Both trees validate on the same 10% holdout; a tree whose recipes can say
    ``data.val_split=test`` (the seed recipes) is told to hold out instead."""
    package = tree / "src" / "imgcls"
    files = [package / "config.py", *sorted((package / "config").glob("*.py"))]
    config = "".join(f.read_text(encoding="utf-8") for f in files if f.exists())
    return ["data.val_split=holdout"] if "val_split" in config else []


def train_once(tree: Path, args: argparse.Namespace, list_file: Path, out: Path, name: str,
               epochs: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "imgcls", "train", "--config", str(tree / args.config),
               "--data", str(list_file), "--epochs", str(epochs), "--output", str(out),
               "--name", name, f"data.root={out / 'cache'}", "log.progress=off",
               "data.val_fraction=0.1", *holdout_keys(tree), *args.set]
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: imgcls train failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    later = rows[1:] or rows
    return {"epoch_s": statistics.median(r["epoch_time_s"] for r in later),
            "img_s": statistics.median(r["train_images_per_s"] for r in later),
            "wall_s": wall, "val_acc": rows[-1]["val_acc"]}


def throughput_once(tree: Path, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    command = [sys.executable, str(tree / "benchmarks" / "train_throughput.py"), "--data",
               str(folder), "--models", args.throughput_model, "--steps",
               str(args.throughput_steps), "--repeats", "1", "--limit", str(args.limit or 2000),
               "--cache-dir", str(Path(tempfile.gettempdir()) / "imgcls-benchmark-cache")]
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tree)
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: train_throughput failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])[args.throughput_model]
    return {"tp_img_s": result["imgcls_img_s"], "tp_ratio": result["ratio"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--base", required=True, help="the git revision to compare against")
    parser.add_argument("--config", default="configs/fast_small.yaml",
                        help="recipe, relative to each tree (default configs/fast_small.yaml)")
    parser.add_argument("--limit", type=int, default=5000, help="images (seeded, stratified)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--throughput-steps", type=int, default=0,
                        help="also run each tree's train_throughput.py with this many steps")
    parser.add_argument("--throughput-model", default="simple_v3")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra config keys for both trees")
    args = parser.parse_args()
    folder = resolve_folder(args.data)
    with tempfile.TemporaryDirectory(prefix="imgcls-compare-") as tmp_name:
        tmp = Path(tmp_name)
        trees = {"base": export_revision(args.base, tmp / "base"), "this": ROOT}
        list_file = tmp / "subset.txt"
        images = write_list_file(folder, args.limit, list_file)
        print(f"{images} images from {folder}; {args.config}, {args.epochs} epochs, "
              f"{args.repeats} repeats; base {args.base}", flush=True)
        train_once(ROOT, args, list_file, tmp / "runs", "warm-cache", 1)  # decode once
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
        for r in range(args.repeats):
            order = list(trees) if r % 2 == 0 else list(reversed(trees))
            for name in order:
                result = train_once(trees[name], args, list_file, tmp / "runs", f"{name}-{r}",
                                    args.epochs)
                if args.throughput_steps:
                    result.update(throughput_once(trees[name], args, folder))
                runs[name].append(result)
                print(f"repeat {r + 1} {name}: " + ", ".join(
                    f"{k} {v:.4g}" for k, v in result.items()), flush=True)
    summary = {name: {k: statistics.median(run[k] for run in rows) for k in rows[0]}
               for name, rows in runs.items()}
    print()
    keys = list(summary["this"])
    print(f"{'tree':<6}" + "".join(f"{k:>12}" for k in keys))
    for name, values in summary.items():
        print(f"{name:<6}" + "".join(f"{values[k]:>12.4g}" for k in keys))
    ratios = {k: summary["this"][k] / summary["base"][k] for k in keys if summary["base"][k]}
    print(f"{'ratio':<6}" + "".join(f"{ratios.get(k, float('nan')):>12.3f}" for k in keys))
    print(json.dumps({"base": args.base, "images": images, "epochs": args.epochs,
                      "repeats": args.repeats, "median": summary, "ratio_this_over_base": ratios}))


if __name__ == "__main__":
    main()
