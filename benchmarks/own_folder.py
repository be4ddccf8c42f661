"""imgcls against timm's ``train.py`` on your own photo folder (issue 27): the same images, split,
model, image size, batch size, epochs, optimiser and schedule, on the same machine, in one
invocation, the two sides alternating.

The peer is timm's own ``train.py``, run unchanged as a subprocess. It is not in timm's wheel
nor in its sdist on PyPI, so pass a copy with ``--timm-train PATH`` (from
github.com/huggingface/pytorch-image-models, ideally the tag of the installed timm; the script
prints both versions). timm itself comes from the ``[bench]`` extra (``pip install -e
".[bench]"``) or ``pip install timm``. Both sides train on the CPU.

The data: a seeded, stratified split (``--val-fraction`` of each class, 10% by default) of
``--data`` (a folder of class folders, or one holding ``train/``), laid out once as symlinked
``train/<class>/`` and ``val/<class>/`` trees under ``--work``, which both tools read (imgcls
validates on ``val/``, timm gets ``--train-split train --val-split val``). ``--phone N`` also
runs on N of the photos (stratified, seeded; default all) re-saved once as phone-size JPEGs
(4032x3024 landscape, 3024x4032 portrait, quality 90, aspect kept by a centre crop) under
``--work``, where decoding dominates; the same split rule then picks the same validation photos.

Both sides get explicitly: the model, ``--image-size``, ``--batch-size``, ``--epochs``, SGD with
Nesterov momentum (``--lr``, ``--momentum``, ``--weight-decay``), cosine decay to 0 per step
after ``--warmup-epochs`` of per-step linear warmup from a tenth of the lr (imgcls's warmup is a
prefix of its epochs; timm gets ``--epochs EPOCHS-WARMUP --warmup-prefix``, the same curve over
the same number of epochs). ``resnet18`` is torchvision's in imgcls and timm's in timm (the same
layers); ``timm/NAME`` is timm's NAME on both sides. Everything else is each
tool's default: augmentation, label smoothing, loader, evaluation crop, checkpointing, threads,
and precision (imgcls: ``train.amp=auto``, bf16 autocast on CPUs with native bf16; timm: fp32).
The ``bf16`` row sets imgcls ``train.amp=bf16`` and timm ``--amp --amp-dtype bfloat16`` (timm's
own autocast); ``fp32`` sets imgcls ``train.amp=off`` against timm's default. A run shared by
two rows (imgcls's default is bf16 on a bf16 CPU) is trained once. Each imgcls run gets a fresh
``data.root``, so it pays its own decode (and cache build) in its first epoch.

Timing is the benchmark's own wall clock from launching each subprocess (interpreter start and
imports in) to the line each tool prints after an epoch's validation (imgcls: ``epoch k/N``;
timm: its last ``Test: [ n/n]``). Reported per side: epoch 1 (setup, first decode / cache build,
workers' start) apart from the steady epochs (median of epochs 2..N), images/s (training images
per epoch / steady epoch, validation in), the time to the final accuracy (the whole run), the
time to the common target (the lower of the two final accuracies), and the final validation
accuracy; then imgcls / timm ratios (accuracy as a difference in points). Ends with one JSON line.

    python benchmarks/own_folder.py --data ../shared/data/flowers --timm-train PATH/train.py \\
        --phone 2934                                   # the full benchmark (hours on 2 cores)
    python benchmarks/own_folder.py --data ../shared/data/flowers --timm-train PATH/train.py \\
        --epochs 1 --limit-per-class 20 --image-size 64 --models resnet18 --phone 20  # a check

``--models`` takes imgcls model names; ``timm/NAME`` is NAME on the timm side, skipped with a
message while imgcls does not accept it. ``--sides imgcls`` or ``--sides timm`` runs one side.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import yaml
from PIL import Image, ImageOps
from tutorial_data import ROOT, resolve_folder

from imgcls.data.folder import scan_folder
from imgcls.runtime import native_bf16

PHONE = (4032, 3024)
PHONE_MB = 5  # about what one phone-size JPEG takes on disk
PRECISIONS = {  # row -> (imgcls train.amp, timm flags)
    "default": (None, []),
    "bf16": ("bf16", ["--amp", "--amp-dtype", "bfloat16"]),
    "fp32": ("off", []),
}
IMGCLS_EPOCH = re.compile(r"^epoch (\d+)/\d+\s")
TIMM_EVAL_END = re.compile(r"^Test: \[\s*(\d+)/(\d+)\]")
CACHE_NOTE = re.compile(r"cache|decod", re.I)


# --------------------------------------------------------------------------- the machine


def git_commit() -> str:
    """The checkout's commit, with ``+dirty`` when tracked files differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def cpu_model() -> str:
    """``lscpu``'s model name, else ``/proc/cpuinfo``'s."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        out = ""
    with contextlib.suppress(OSError):
        out += Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    return next((line.partition(":")[2].strip() for line in out.splitlines()
                 if line.lower().startswith("model name")), "unknown")


def timm_version() -> str:
    try:
        import timm
    except ImportError:
        return "not installed"
    return timm.__version__


def script_version(path: Path) -> str:
    """The timm version a train.py's checkout declares (its ``timm/version.py``), if beside it."""
    version = path.parent / "timm" / "version.py"
    match = re.search(r"'(.+)'", version.read_text()) if version.is_file() else None
    return f"from timm {match.group(1)}" if match else "its timm version not recorded beside it"


# --------------------------------------------------------------------------- the data


def seeded_order(names: list[str], seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [names[i] for i in torch.randperm(len(names), generator=g).tolist()]


def class_files(folder: Path) -> dict[str, list[Path]]:
    """Each class's image files (imgcls's scan: its file types, sorted)."""
    samples, classes = scan_folder(folder)
    out: dict[str, list[Path]] = {c: [] for c in classes}
    for path, label in samples:
        out[classes[label]].append(Path(path))
    return out


def build_split(folder: Path, out: Path, val_fraction: float, limit: int | None,
                seed: int) -> dict[str, int]:
    """Symlinked ``out/train/<class>/`` and ``out/val/<class>/``: per class, a seeded order of
    the file names, the first ``val_fraction`` of them validation (at least one), the rest
    training; with ``limit``, only the first ``limit`` of that order. Rebuilt every run."""
    shutil.rmtree(out, ignore_errors=True)
    counts = {"train": 0, "val": 0}
    for cls, files in class_files(folder).items():
        by_name = {f.name: f for f in files}
        order = seeded_order(sorted(by_name), seed)[:limit]
        n_val = max(1, round(val_fraction * len(order)))
        for i, name in enumerate(order):
            part = "val" if i < n_val else "train"
            (out / part / cls).mkdir(parents=True, exist_ok=True)
            (out / part / cls / name).symlink_to(by_name[name].resolve())
            counts[part] += 1
    return counts


def phone_photo(src: Path, dst: Path, quality: int) -> None:
    """``src`` at phone size (orientation kept, centre-cropped to 4:3), as a JPEG; written
    under a temporary name first, so a stopped run leaves no half photo."""
    part = dst.with_suffix(".part")
    with Image.open(src) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        size = PHONE if im.width >= im.height else PHONE[::-1]
        ImageOps.fit(im, size, Image.Resampling.BICUBIC).save(part, "JPEG", quality=quality)
    part.rename(dst)


def phone_folder(folder: Path, work: Path, n: int | None, seed: int, quality: int) -> Path:
    """``n`` of ``folder``'s photos (stratified, seeded; None: all) re-saved at phone size under
    ``work/phone-<folder>-<quality>-<hash>/<class>/``, kept for later runs; returns a folder of
    links to just those."""
    files = class_files(folder)
    total = sum(map(len, files.values()))
    n = total if n is None else min(n, total)
    tag = f"{folder.parent.name if folder.name == 'train' else folder.name}-{quality}"
    tag += "-" + hashlib.sha1(str(folder).encode()).hexdigest()[:8]  # one store per source
    store, chosen = work / f"phone-{tag}", work / f"phone-{tag}-{n}"
    shutil.rmtree(chosen, ignore_errors=True)
    by_name = {c: {f.name: f for f in fs} for c, fs in files.items()}
    picks = {c: seeded_order(sorted(names), seed)[:k]
             for (c, names), k in zip(by_name.items(), quotas(files, n), strict=True)}
    todo = [(by_name[c][name], store / c / name) for c, names in picks.items()
            for name in names if not (store / c / name).is_file()]
    check_disk(store, len(todo))
    start = time.perf_counter()
    for dst in {dst.parent for _, dst in todo}:
        dst.mkdir(parents=True, exist_ok=True)
    with concurrent.futures.ProcessPoolExecutor(os.cpu_count()) as pool:  # before any timing
        saves = pool.map(phone_photo, *zip(*todo, strict=True), [quality] * len(todo),
                         chunksize=8) if todo else []
        for i, _ in enumerate(saves, 1):
            if i % 200 == 0 or i == len(todo):
                print(f"  phone size: {i}/{len(todo)} re-saved, "
                      f"{time.perf_counter() - start:.0f}s", flush=True)
    for c, names in picks.items():
        (chosen / c).mkdir(parents=True, exist_ok=True)
        for name in names:
            (chosen / c / name).symlink_to(store / c / name)
    return chosen


def quotas(files: dict[str, list[Path]], n: int) -> list[int]:
    """``n`` shared among the classes in proportion to their sizes (largest remainders), at
    least one each."""
    total = sum(map(len, files.values()))
    exact = [n * len(fs) / total for fs in files.values()]
    out = [int(x) for x in exact]
    for i in sorted(range(len(exact)), key=lambda i: out[i] - exact[i])[:n - sum(out)]:
        out[i] += 1
    return [max(1, k) for k in out]


def check_disk(where: Path, photos: int) -> None:
    where.mkdir(parents=True, exist_ok=True)
    free_mb = shutil.disk_usage(where).free / 2**20
    if photos * PHONE_MB > free_mb - 1024:
        raise SystemExit(f"--phone: {photos} phone-size photos need about {photos * PHONE_MB} "
                         f"MB; {where} has {free_mb:.0f} MB free")


# --------------------------------------------------------------------------- running a side


def timed_run(cmd: list[str], log: Path, marker: re.Pattern[str], cwd: Path
              ) -> tuple[int, list[float], list[str]]:
    """Run ``cmd`` (stdout and stderr into ``log``); returns (exit code, seconds since launch
    at each line ``marker`` counts as an epoch's end, lines before the first epoch end)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    ends: list[float] = []
    head: list[str] = []
    start = time.perf_counter()
    with log.open("w") as out, subprocess.Popen(cmd, cwd=cwd, env=env, text=True, bufsize=1,
                                                stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT) as proc:
        out.write(shlex.join(cmd) + "\n")
        for line in proc.stdout or ():
            out.write(line)
            if epoch_end(marker, line):
                ends.append(time.perf_counter() - start)
            elif not ends:
                head.append(line.rstrip())
    return proc.returncode, ends, head


def epoch_end(marker: re.Pattern[str], line: str) -> bool:
    match = marker.match(line)
    return bool(match) and (match.lastindex == 1 or match.group(1) == match.group(2))


def shared_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"image_size": args.image_size, "batch_size": args.batch_size,
            "epochs": args.epochs, "lr": args.lr, "momentum": args.momentum,
            "weight_decay": args.weight_decay, "warmup_epochs": args.warmup_epochs}


def imgcls_command(args: argparse.Namespace, data: Path, model: str, amp: str | None,
                   run: Path) -> list[str]:
    s = shared_settings(args)
    cmd = [sys.executable, "-m", "imgcls", "train", "--data", str(data), "--model", model,
           "--epochs", str(s["epochs"]), "--batch-size", str(s["batch_size"]),
           "--lr", str(s["lr"]), "--device", "cpu", "--output", str(run.parent), "--name", run.name,
           f"transforms.image_size={s['image_size']}", "optim.name=sgd", "optim.nesterov=true",
           f"optim.momentum={s['momentum']}", f"optim.weight_decay={s['weight_decay']}",
           "sched.name=cosine", "sched.min_lr=0", f"sched.warmup_epochs={s['warmup_epochs']}",
           "sched.warmup_start_factor=0.1", f"data.root={run}-data", "log.progress=off",
           "log.tensorboard=false"]
    return cmd + ([f"train.amp={amp}"] if amp else []) + args.imgcls_set


def timm_command(args: argparse.Namespace, data: Path, model: str, flags: list[str],
                 run: Path, classes: int) -> list[str]:
    s = shared_settings(args)
    return [sys.executable, str(args.timm_train), "--data-dir", str(data),
            "--train-split", "train", "--val-split", "val", "--num-classes", str(classes),
            "--model", model.removeprefix("timm/"), "--img-size", str(s["image_size"]),
            "-b", str(s["batch_size"]), "--epochs", str(s["epochs"] - s["warmup_epochs"]),
            "--warmup-prefix", "--opt", "sgd",
            "--lr", str(s["lr"]), "--momentum", str(s["momentum"]),
            "--weight-decay", str(s["weight_decay"]), "--sched", "cosine", "--min-lr", "0",
            "--warmup-epochs", str(s["warmup_epochs"]), "--warmup-lr", str(s["lr"] / 10),
            "--sched-on-updates", "--device", "cpu", "--output", str(run.parent),
            "--experiment", run.name, *flags, *shlex.split(args.timm_args)]


def imgcls_result(run: Path) -> dict[str, Any]:
    """val_acc per epoch, the training images and the precision of an imgcls run folder."""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
    split = json.loads((run / "split.json").read_text())
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    amp = (cfg.get("resolved") or {}).get("train.amp", cfg["train"]["amp"])
    return {"accs": [r["val_acc"] for r in rows], "train_images": len(split["train"]),
            "precision": {"bf16": "bf16 autocast", "fp16": "fp16 autocast"}.get(amp, "fp32")}


def timm_result(run: Path, train_images: int, batch_size: int, flags: list[str]) -> dict[str, Any]:
    """eval_top1 per epoch from timm's summary.csv; it drops each epoch's partial batch."""
    lines = (run / "summary.csv").read_text().splitlines()
    col = lines[0].split(",").index("eval_top1")
    return {"accs": [float(x.split(",")[col]) / 100 for x in lines[1:] if x],
            "train_images": max(train_images // batch_size, 1) * batch_size,
            "precision": "bf16 autocast" if "bfloat16" in flags else "fp32"}


def run_side(job: dict[str, Any], args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Train one job; its epoch ends, accuracies, images and setup lines (or its error)."""
    run = out / job["name"]
    marker = IMGCLS_EPOCH if job["side"] == "imgcls" else TIMM_EVAL_END
    print(f"  {job['name']}: {shlex.join(job['cmd'][1:])}", flush=True)
    code, ends, head = timed_run(job["cmd"], out / f"{job['name']}.log", marker, out)
    if code != 0 or not ends:
        tail = (out / f"{job['name']}.log").read_text().splitlines()[-15:]
        print("\n".join([f"  failed (exit {code}); the log's end:", *tail]), flush=True)
        return {"error": f"exit {code}", "log": str(out / f"{job['name']}.log")}
    if job["side"] == "imgcls":
        result = imgcls_result(run)
        result["setup_notes"] = [x for x in head if CACHE_NOTE.search(x)]
    else:
        result = timm_result(run, job["train_images"], args.batch_size, job["flags"])
    result["ends"] = ends
    for note in result.get("setup_notes", []):
        print(f"  imgcls's setup: {note[:300]}", flush=True)
    print(f"  done: epochs end at {', '.join(f'{t:.1f}' for t in ends)} s, val_acc "
          f"{result['accs'][-1]:.4f}", flush=True)
    return result


# --------------------------------------------------------------------------- the figures


def summarise(r: dict[str, Any], target: float | None) -> dict[str, Any]:
    """Epoch 1, the steady epoch, images/s, the run's time and the time to ``target``."""
    ends, accs = r["ends"], r["accs"]
    steps = [b - a for a, b in zip(ends, ends[1:], strict=False)]
    steady = statistics.median(steps) if steps else ends[0]
    hit = next((t for t, a in zip(ends, accs, strict=False)
                if target is not None and a >= target - 1e-9), None)
    return {"precision": r["precision"], "first_epoch_s": round(ends[0], 2),
            "steady_epoch_s": round(steady, 2), "steady_from_epoch_1": not steps,
            "images_per_s": round(r["train_images"] / steady, 1),
            "total_s": round(ends[-1], 2), "target_s": None if hit is None else round(hit, 2),
            "final_acc": round(accs[-1], 4), "best_acc": round(max(accs), 4),
            "epochs": len(ends), "train_images": r["train_images"],
            "epoch_ends_s": [round(t, 2) for t in ends], "val_accs": [round(a, 4) for a in accs],
            "setup_notes": r.get("setup_notes", [])}


def median_result(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The repeat with the median steady epoch (None when every repeat failed)."""
    good = sorted((r for r in results if "error" not in r),
                  key=lambda r: statistics.median(
                      [b - a for a, b in zip(r["ends"], r["ends"][1:], strict=False)]
                      or r["ends"][:1]))
    return good[(len(good) - 1) // 2] if good else None


def pair(ours: dict[str, Any] | None, peer: dict[str, Any] | None) -> dict[str, Any]:
    """Both sides summarised against the common target, and imgcls / timm ratios."""
    target = (min(ours["accs"][-1], peer["accs"][-1]) if ours and peer else None)
    row: dict[str, Any] = {"target_acc": target}
    row["imgcls"] = summarise(ours, target) if ours else None
    row["timm"] = summarise(peer, target) if peer else None
    if ours and peer:
        a, b = row["imgcls"], row["timm"]
        row["ratios"] = {
            "images_per_s": round(a["images_per_s"] / b["images_per_s"], 3),
            "steady_epoch_s": round(a["steady_epoch_s"] / b["steady_epoch_s"], 3),
            "first_epoch_s": round(a["first_epoch_s"] / b["first_epoch_s"], 3),
            "total_s": round(a["total_s"] / b["total_s"], 3),
            "target_s": (round(a["target_s"] / b["target_s"], 3)
                         if a["target_s"] and b["target_s"] else None),
            "acc_points": round(100 * (a["final_acc"] - b["final_acc"]), 2)}
    return row


def table(rows: dict[str, dict[str, Any]]) -> str:
    """One line per side and one of ratios per row."""
    w = max(len(name) for name in rows) + 2
    head = (f"{'folder / model / row':<{w}}{'side':<8}{'precision':<15}{'img/s':>8}"
            f"{'epoch 1 s':>11}{'epoch s':>9}{'to final s':>11}{'to target s':>12}{'val acc':>9}")
    lines = [head, "-" * len(head)]
    for name, row in rows.items():
        for side in ("imgcls", "timm"):
            r = row.get(side)
            if r:
                to = "-" if r["target_s"] is None else f"{r['target_s']:.1f}"
                lines.append(f"{name:<{w}}{side:<8}{r['precision']:<15}{r['images_per_s']:>8.1f}"
                             f"{r['first_epoch_s']:>11.1f}{r['steady_epoch_s']:>9.1f}"
                             f"{r['total_s']:>11.1f}{to:>12}{r['final_acc']:>9.4f}")
        if "ratios" in row:
            q = row["ratios"]
            to = "-" if q["target_s"] is None else f"{q['target_s']:.2f}x"
            lines.append(f"{'':<{w}}{'ratio':<23}{q['images_per_s']:>7.2f}x"
                         f"{q['first_epoch_s']:>10.2f}x{q['steady_epoch_s']:>8.2f}x"
                         f"{q['total_s']:>10.2f}x{to:>12}{q['acc_points']:>+8.2f}p")
        elif row.get("skipped"):
            lines.append(f"{name:<{w}}skipped: {row['skipped']}")
    if any((row.get(side) or {}).get("steady_from_epoch_1") for row in rows.values()
           for side in ("imgcls", "timm")):
        lines.append("(a 1-epoch run has no steady epoch: its epoch s and img/s are epoch 1's)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the plan


def imgcls_refuses(model: str, data: Path) -> str | None:
    """imgcls's one-line error when it cannot build ``model`` (a dry run), else None."""
    proc = subprocess.run([sys.executable, "-m", "imgcls", "train", "--data", str(data),
                           "--model", model, "--epochs", "1", "--dry-run",
                           "transforms.image_size=32", "loader.batch_size=2"],
                          capture_output=True, text=True, cwd=data.parent)
    if proc.returncode == 0:
        return None
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit {proc.returncode}"


def imgcls_amp(row: str) -> str:
    """The train.amp an imgcls run of ``row`` resolves to on this CPU (runs that agree are one)."""
    amp = PRECISIONS[row][0]
    return amp or ("bf16" if native_bf16() else "off")


def plan_jobs(folder: str, data: Path, model: str, rows: list[str], counts: dict[str, int],
              args: argparse.Namespace, classes: int, repeat: int) -> list[dict[str, Any]]:
    """The model's distinct runs on one folder, imgcls and timm alternating (reversed on odd
    repeats)."""
    stem = f"{folder}-{model.replace('/', '_')}"
    ours: dict[str, dict[str, Any]] = {}
    peers: dict[str, dict[str, Any]] = {}
    for row in rows:
        amp, flags = PRECISIONS[row]
        key, tkey = imgcls_amp(row), ("bf16" if flags else "fp32")
        name = f"{stem}-imgcls-{key}-r{repeat}"
        ours.setdefault(key, {"side": "imgcls", "key": key, "name": name, "cmd": imgcls_command(
            args, data, model, amp, args.output / name)})
        name = f"{stem}-timm-{tkey}-r{repeat}"
        peers.setdefault(tkey, {"side": "timm", "key": tkey, "name": name, "flags": flags,
                                "train_images": counts["train"], "cmd": timm_command(
                                    args, data, model, flags, args.output / name, classes)})
    timm_fits = counts["train"] >= args.batch_size  # timm drops partial batches
    if "timm" in args.sides and not timm_fits:
        print(f"skipping timm on {folder}: {counts['train']} training images, fewer than a "
              f"batch of {args.batch_size} (timm drops partial batches)", flush=True)
    sides = [list(ours.values()) if "imgcls" in args.sides else [],
             list(peers.values()) if "timm" in args.sides and timm_fits else []]
    if repeat % 2:
        sides.reverse()
    return [j for pair_ in zip_longest(*sides) for j in pair_ if j]


def zip_longest(a: list[Any], b: list[Any]) -> Iterable[tuple[Any, Any]]:
    n = max(len(a), len(b))
    return zip(a + [None] * (n - len(a)), b + [None] * (n - len(b)), strict=True)


def bench_folder(folder: str, data: Path, args: argparse.Namespace,
                 rows: list[str]) -> dict[str, dict[str, Any]]:
    """Every model and row on one split folder; results keyed ``folder / model / row``."""
    counts = {p: sum(1 for _ in (data / p).rglob("*") if _.is_file()) for p in ("train", "val")}
    classes = len([p for p in (data / "train").iterdir() if p.is_dir()])
    print(f"\n== {folder}: {data} ({counts['train']} train / {counts['val']} val images, "
          f"{classes} classes)", flush=True)
    out: dict[str, dict[str, Any]] = {}
    for model in args.models:
        refused = imgcls_refuses(model, data) if "imgcls" in args.sides else None
        if refused:
            print(f"skipping {model}: imgcls does not accept it yet ({refused})", flush=True)
            for row in rows:
                out[f"{folder} / {model} / {row}"] = {"skipped": refused}
            continue
        done: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for repeat in range(args.repeats):
            for job in plan_jobs(folder, data, model, rows, counts, args, classes, repeat):
                done.setdefault((job["side"], job["key"]), []).append(
                    run_side(job, args, args.output))
        for row in rows:
            ours = median_result(done.get(("imgcls", imgcls_amp(row)), []))
            peer = median_result(done.get(("timm", "bf16" if PRECISIONS[row][1] else "fp32"),
                                          []))
            out[f"{folder} / {model} / {row}"] = pair(ours, peer)
    return out


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/flowers",
                   help="a folder of class folders, or one holding train/ (default: the flowers)")
    p.add_argument("--timm-train", type=Path, default=None,
                   help="timm's train.py (not shipped in timm's wheel or sdist)")
    p.add_argument("--timm-args", default="", help="extra arguments for timm's train.py")
    p.add_argument("--imgcls-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra imgcls config override (repeatable)")
    p.add_argument("--models", default="resnet18,timm/resnet18",
                   type=lambda s: [m for m in s.split(",") if m],
                   help="imgcls model names; timm/NAME is NAME in timm (default %(default)s)")
    p.add_argument("--rows", default="default,bf16",
                   help=f"precision rows, comma-separated: {', '.join(PRECISIONS)}")
    p.add_argument("--sides", default="imgcls,timm", help="imgcls,timm, or one of them")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--limit-per-class", type=int, default=None,
                   help="use only this many photos of each class (a quick check)")
    p.add_argument("--seed", type=int, default=0, help="the split's and the phone pick's seed")
    p.add_argument("--phone", type=int, nargs="?", const=-1, default=None, metavar="N",
                   help="also run on N photos re-saved at phone size (no N: all)")
    p.add_argument("--phone-only", action="store_true", help="skip the folder as it is")
    p.add_argument("--phone-quality", type=int, default=90)
    p.add_argument("--repeats", type=int, default=1,
                   help="runs per side, alternating which side goes first (median reported)")
    p.add_argument("--work", type=Path, default=Path("/tmp/imgcls-own-folder"),
                   help="splits, phone-size photos and runs go here (default %(default)s)")
    return p.parse_args()


def check_args(args: argparse.Namespace) -> list[str]:
    """Validated args (in place); returns the rows."""
    rows = [r for r in args.rows.split(",") if r]
    bad = [r for r in rows if r not in PRECISIONS] + [
        s for s in args.sides.split(",") if s not in ("imgcls", "timm")]
    if bad or not rows:
        raise SystemExit(f"unknown --rows / --sides value(s): {', '.join(bad) or 'none given'}")
    args.sides = args.sides.split(",")
    if "timm" in args.sides:
        if args.timm_train is None or not args.timm_train.is_file():
            raise SystemExit("the timm side needs --timm-train PATH: timm's train.py is in its "
                             "GitHub repository (huggingface/pytorch-image-models), not in its "
                             "wheel or sdist; or run --sides imgcls")
        args.timm_train = args.timm_train.resolve()
        if args.warmup_epochs >= args.epochs:
            raise SystemExit("--warmup-epochs must be below --epochs (timm's warmup is a prefix "
                             "of the epochs: train.py --epochs EPOCHS-WARMUP --warmup-prefix)")
    data = args.data.expanduser().resolve()
    if ROOT.parent / "shared" in (args.work.resolve(), *args.work.resolve().parents):
        raise SystemExit("--work must not be inside ../shared (read-only data)")
    args.data = resolve_folder(data)
    args.output = args.work.resolve() / "runs" / time.strftime("%Y%m%d-%H%M%S")
    args.output.mkdir(parents=True)
    return rows


def folders(args: argparse.Namespace) -> dict[str, Path]:
    """The split folders to run on: the photos as they are, and at phone size."""
    work = args.work.resolve()
    out: dict[str, Path] = {}
    limit = args.limit_per_class
    if not args.phone_only:
        counts = build_split(args.data, work / "split-original", args.val_fraction, limit,
                             args.seed)
        out["original"] = work / "split-original"
        print(f"split of {args.data}: {counts}", flush=True)
    if args.phone is not None:
        n = None if args.phone < 0 else args.phone
        phone = phone_folder(args.data, work, n, args.seed, args.phone_quality)
        counts = build_split(phone, work / "split-phone", args.val_fraction, limit, args.seed)
        out["phone"] = work / "split-phone"
        print(f"split of {phone} (phone size): {counts}", flush=True)
    return out


def main() -> None:
    args = parse_args()
    rows = check_args(args)
    print(f"imgcls {git_commit()} against timm {timm_version()}'s train.py "
          f"({args.timm_train}, {script_version(args.timm_train)})"
          if args.timm_train else f"imgcls {git_commit()} alone")
    print(f"CPU: {cpu_model()}, {os.cpu_count()} CPUs, native bf16: {native_bf16() or 'none'}; "
          f"torch {torch.__version__}; load average {os.getloadavg()[0]:.2f}")
    print(f"both: {shared_settings(args)}; SGD Nesterov, cosine to 0; runs in {args.output}",
          flush=True)
    results: dict[str, dict[str, Any]] = {}
    for name, data in folders(args).items():
        results.update(bench_folder(name, data, args, rows))
    print()
    print(table(results))
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.2f} (1 min), {load[2]:.2f} (15 min); other work "
          "on the machine slows both sides unevenly: rerun with --repeats 3 when it is high")
    print(json.dumps({"results": results, "settings": shared_settings(args), "load": load,
                      "commit": git_commit(), "cpu": cpu_model(), "timm": timm_version(),
                      "timm_train": str(args.timm_train), "output": str(args.output)}))


if __name__ == "__main__":
    main()
