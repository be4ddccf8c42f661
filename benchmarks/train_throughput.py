"""Training images per second: imgcls's training loop against the plain tutorial loop, with the
same model, batch size and images, measured side by side in one run; plus the FLOPs achieved.

The tutorial loop (seed 001's code path): torchvision ``ImageFolder`` with PIL transforms
(``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()``, ``ToTensor()``, ``Normalize`` with the
CIFAR-10 mean/std), ``DataLoader(shuffle=True, num_workers=0)``, ``SGD(lr, momentum=0.9)`` with
torch's default (on CPU: per-tensor, not foreach) kernels, the model in its default contiguous
memory format, fp32, ``loss.item()`` and the batch accuracy's ``.item()`` on every batch.

The imgcls loop (what ``imgcls train`` does): the images decoded once by ``decode_to_tensor``
(cached on disk; its time is reported on its own, not in the images/s), ``MemoryLoader`` with the
same augmentations made per batch, the model in channels_last,
the optimiser (foreach on CPU, fused on CUDA), schedule, loss and speed switches that
``imgcls train`` builds (``imgcls.engine.components``) from the model's recipe
(``configs/simple_v3_seed.yaml`` for simple_v3, ``configs/fast.yaml`` for fastnet, imgcls's
defaults for other models), and ``imgcls.engine.loop.train_one_epoch`` over that
``TrainState``. fastnet's whitening stem is set from the data first (as ``imgcls train`` does,
``components.build_model``), and both loops start from the same weights. The
tutorial's SGD uses the recipe's lr. ``--compile`` adds a third row: imgcls's loop with the model
``torch.compile``d (its compile time is reported on its own).

Each measurement is a fixed number of training steps (``--steps``) after ``--warmup`` untimed
steps, counting the images actually trained on (epochs roll over as in training; the tutorial
starts a new DataLoader iterator, imgcls calls ``set_epoch``). Repeats alternate which loop runs
first, so a machine that slows down slows both; medians are reported.

FLOPs: one training step (forward, loss and backward) is counted with
``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions), per image. ``gflops`` is
that times imgcls's images/s; ``roof_gflops`` is this machine's fp32 matmul rate measured in the
same run (the median of 2048 x 2048 ``torch.mm`` timings, a few per repeat, with torch's default
threads unless ``--threads``); ``utilisation`` = gflops / roof_gflops, as measured (it can exceed
1: oneDNN's conv kernels can beat the sgemm measured).

Torch's default thread count (one per core) is the right one on an idle machine; on a 2-core
machine that also runs something else, two OpenMP threads wait on each other and every rate
(the roof too) can drop several-fold. Check the load averages printed at the start and end.

    python benchmarks/train_throughput.py           # all of ../shared/data/cifar10, batch 128,
                                                    # 3 repeats (about 5 minutes on 2 cores)
    python benchmarks/train_throughput.py --quick   # 512 images, a few steps (under a minute)
    python benchmarks/train_throughput.py --models simple_v3,fastnet --steps 40 --repeats 3 \\
        --batch-size 128 --data PATH --cache-dir DIR [--compile] [--device cpu] [--threads N]

``--data`` is a folder of class folders or a folder holding ``train/`` (its class folders).
Prints a table, then as its last line one JSON object: per model ``imgcls_img_s``,
``tutorial_img_s``, ``ratio`` (imgcls / tutorial), ``gflops``, ``roof_gflops``, ``utilisation``,
``mflop_per_img``, ``cpu`` (per loop, medians per measurement from ``getrusage``: ``user_s``,
``sys_s``, ``sys_share`` (kernel share of the process's CPU time, every thread), ``faults_per_s``,
``faults_per_step``, ``cpu_per_wall``) (and extras), plus ``roof_gflops``, ``decode_s``,
``images``, ``device``, ``max_rss_mb``, ...

Where the kernel time goes: at batch 1024 most tensors of a training step are larger than
glibc's largest mmap threshold (32 MB), so each is mmap'd fresh and unmapped when freed, and
every page is faulted in and zeroed by the kernel again on the next step. ``--malloc mallopt``
keeps freed memory in the heap instead (glibc ``mallopt``: no mmap'd chunks, no trimming; what
``imgcls train`` does at start, ``runtime.keep_freed_memory``, unless ``IMGCLS_MALLOPT=0``);
``--compare-malloc ROUNDS`` runs the default, that, and PyTorch's ``THP_MEM_ALLOC_ENABLE=1``
(2 MB pages for large tensors) each in its own process, alternating, and compares them:

    python benchmarks/train_throughput.py --models fastnet_s --batch-size 1024 --limit 5000 \
        --steps 4 --warmup 1 --compare-malloc 3
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from tutorial_data import (
    CIFAR_MEAN,
    CIFAR_STD,
    PADDING,
    ROOT,
    add_data_argument,
    pick_samples,
    resolve_folder,
    timed_decode,
    tutorial_loader,
)

from imgcls.config import Config, build_config, load_yaml
from imgcls.data.folder import ImageFileDataset
from imgcls.data.memory import MemoryLoader
from imgcls.engine import components
from imgcls.engine.loop import train_one_epoch
from imgcls.losses import create_loss
from imgcls.runtime import keep_freed_memory

RECIPES = {"simple_v3": "configs/simple_v3_seed.yaml", "fastnet": "configs/fast.yaml",
           "fastnet_s": "configs/fast_small.yaml"}
# Steps per measurement in the full run: about 20 s of imgcls's loop each on 2 cores.
DEFAULT_STEPS = {"simple_v3": 180, "fastnet": 80}
FALLBACK_STEPS = 80
QUICK_IMAGES = 512
QUICK_STEPS = 3
ROOF_N = 2048
ROOF_PER_REPEAT = 3

Batch = tuple[torch.Tensor, torch.Tensor]
LOOPS = ("imgcls", "tutorial")
# --compare-malloc variants: how the child process allocates (see the module docstring)
MALLOC_VARIANTS = ("default", "mallopt", "thp")


# --------------------------------------------------------------------------- where the CPU goes


def cpu_usage() -> tuple[float, float, int, int]:
    """(user s, system s, minor and major page faults) of this process so far, every thread."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime, ru.ru_stime, ru.ru_minflt, ru.ru_majflt


def usage_delta(before: tuple[float, float, int, int], seconds: float, steps: int,
                images: int) -> dict[str, float]:
    """CPU use since ``before``; ``img_per_cpu_s`` (images per CPU second, user + system) does
    not depend on how much of the machine other processes took, unlike images/s."""
    user, system, minflt, majflt = (a - b for a, b in zip(cpu_usage(), before, strict=True))
    return {"user_s": user, "sys_s": system, "sys_share": system / max(user + system, 1e-9),
            "faults_per_s": (minflt + majflt) / seconds, "faults_per_step": (minflt + majflt)
            / max(steps, 1), "cpu_per_wall": (user + system) / seconds,
            "img_per_cpu_s": images / max(user + system, 1e-9)}


def median_usage(measurements: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(m[k] for m in measurements), 4) for k in measurements[0]}


# --------------------------------------------------------------------------- data


def endless(loader: Iterable[Batch], set_epoch: Callable[[int], None] | None = None
            ) -> Iterator[Batch]:
    """Batches of epoch after epoch, as training would draw them."""
    for epoch in itertools.count():
        if set_epoch is not None:
            set_epoch(epoch)
        yield from loader


class Steps:
    """``steps`` batches taken from a shared endless stream: a loader for train_one_epoch."""

    def __init__(self, batches: Iterator[Batch], steps: int) -> None:
        self.batches, self.steps = batches, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[Batch]:
        return itertools.islice(self.batches, self.steps)


# --------------------------------------------------------------------------- the two loops


def recipe_config(model: str, batch_size: int) -> Config:
    """The model's recipe (optimizer, schedule, loss) with this benchmark's batch size."""
    recipe = RECIPES.get(model)
    base = load_yaml(ROOT / recipe) if recipe else {}
    return build_config(base, {"model.name": model, "loader.batch_size": batch_size})


class ImgclsRun:
    """imgcls's loop: the TrainState ``imgcls train`` builds (``engine.components``) and
    train_one_epoch on MemoryLoader batches."""

    def __init__(self, model: nn.Module, cfg: Config, loader: MemoryLoader,
                 device: torch.device, compile_model: bool = False) -> None:
        model = model.to(device, memory_format=torch.channels_last)
        self.state = components.build_train_state(cfg, model, device,
                                                  steps_per_epoch=len(loader))
        if compile_model:
            self.state.model = torch.compile(self.state.model)
        self.batches = endless(loader, loader.set_epoch)
        self.last_loss = math.nan

    def run(self, steps: int) -> tuple[float, int]:
        """Seconds and images trained for ``steps`` steps."""
        start = time.perf_counter()
        metrics = train_one_epoch(self.state, Steps(self.batches, steps))
        seconds = time.perf_counter() - start
        self.last_loss = metrics["train_loss"]
        return seconds, int(metrics["train_samples"])


class TutorialRun:
    """Seed 001's loop, as written there (per-batch ``.item()``, default SGD kernels)."""

    def __init__(self, model: nn.Module, lr: float, loader: DataLoader,
                 device: torch.device) -> None:
        self.model = model.to(device)
        self.device = device
        self.loss_function = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=0.9)
        self.batches = endless(loader)
        self.last_loss = math.nan

    def run(self, steps: int) -> tuple[float, int]:
        start = time.perf_counter()
        self.model.train()
        train_loss, train_acc, count = 0.0, 0.0, 0
        for imgs, targets in itertools.islice(self.batches, steps):
            imgs, targets = imgs.to(self.device), targets.to(self.device)
            output = self.model(imgs)
            acc = (output.argmax(dim=1) == targets).float().sum()
            loss = self.loss_function(output, targets)
            train_loss += loss.item()
            train_acc += acc.item()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            count += targets.shape[0]
        seconds = time.perf_counter() - start
        self.last_loss = train_loss / max(steps, 1)
        return seconds, count


# --------------------------------------------------------------------------- FLOPs and roof


def step_flops(model: nn.Module, loss_fn: nn.Module, images: torch.Tensor,
               labels: torch.Tensor) -> int:
    """FLOPs of one training step's forward, loss and backward on this batch (on a copy)."""
    model = copy.deepcopy(model)
    model.train()
    with FlopCounterMode(display=False) as counter:
        loss = loss_fn(model(images), labels)
        loss.backward()
    return int(counter.get_total_flops())


def matmul_gflops(device: torch.device, n: int = ROOF_N, reps: int = ROOF_PER_REPEAT
                  ) -> list[float]:
    """fp32 ``torch.mm`` of two n x n matrices, GFLOP/s per timing (after one untimed)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    out = torch.empty(n, n, device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    torch.mm(a, b, out=out)
    sync()
    rates = []
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        sync()
        rates.append(2 * n**3 / (time.perf_counter() - start) / 1e9)
    return rates


# --------------------------------------------------------------------------- report


def table(results: dict[str, dict[str, Any]], rows: dict[str, dict[str, list[float]]]) -> str:
    head = (f"{'model':<11} {'loop':<16} {'median img/s':>13} {'min':>9} {'max':>9} "
            f"{'ratio':>7} {'GFLOP/s':>9} {'roof':>8} {'util':>6}")
    lines = [head]
    for model, r in results.items():
        for loop, rates in rows[model].items():
            median = statistics.median(rates)
            extra = ""
            if loop == "imgcls":
                ratio = f"{r['ratio']:>6.2f}x" if r["ratio"] is not None else f"{'-':>7}"
                extra = (f"{ratio} {r['gflops']:>9.1f} {r['roof_gflops']:>8.1f} "
                         f"{r['utilisation']:>6.2f}")
            elif loop == "imgcls+compile" and r["tutorial_img_s"]:
                extra = f"{median / r['tutorial_img_s']:>6.2f}x"
            lines.append(f"{model:<11} {loop:<16} {median:>13,.1f} {min(rates):>9,.1f} "
                         f"{max(rates):>9,.1f} {extra}".rstrip())
    return "\n".join(lines)


def compare_malloc(args: argparse.Namespace, variants: list[str]) -> None:
    """``--compare-malloc``: each variant in its own process (an allocator setting holds for a
    whole process), rounds alternating which runs first; medians over rounds."""
    child = [sys.executable, str(Path(__file__).resolve()), "--data", str(args.data),
             "--models", args.models, "--batch-size", str(args.batch_size), "--repeats", "1",
             "--loops", "imgcls", "--seed", str(args.seed)]
    for flag, value in (("--steps", args.steps), ("--warmup", args.warmup),
                        ("--limit", args.limit), ("--cache-dir", args.cache_dir),
                        ("--device", args.device), ("--threads", args.threads)):
        if value is not None:
            child += [flag, str(value)]
    if args.quick:
        child.append("--quick")
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    print(f"--compare-malloc: {args.compare_malloc} rounds of {', '.join(variants)}, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    for r in range(args.compare_malloc):
        for variant in variants if r % 2 == 0 else list(reversed(variants)):
            env = dict(os.environ)
            env.pop("THP_MEM_ALLOC_ENABLE", None)
            command = child + (["--malloc", "mallopt"] if variant == "mallopt" else [])
            if variant == "thp":
                env["THP_MEM_ALLOC_ENABLE"] = "1"  # read by PyTorch's allocator at start
            proc = subprocess.run(command, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{variant} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
            out = json.loads(proc.stdout.strip().splitlines()[-1])
            runs[variant].append(out)
            for model in (m for m in out if isinstance(out[m], dict) and "cpu" in out[m]):
                c = out[model]["cpu"]["imgcls"]
                print(f"round {r + 1} {variant:<8} {model}: {out[model]['imgcls_img_s']:,.1f} "
                      f"img/s, {c['img_per_cpu_s']:,.1f} img per CPU s, user {c['user_s']:.2f}s "
                      f"sys {c['sys_s']:.2f}s "
                      f"({c['sys_share']:.1%}), {c['faults_per_s']:,.0f} faults/s", flush=True)
    summary: dict[str, Any] = {}
    for variant, outs in runs.items():
        models = [m for m in outs[0] if isinstance(outs[0][m], dict) and "cpu" in outs[0][m]]
        summary[variant] = {m: {
            "img_s": round(statistics.median(o[m]["imgcls_img_s"] for o in outs), 1),
            **median_usage([o[m]["cpu"]["imgcls"] for o in outs]),
            "img_s_runs": [round(o[m]["imgcls_img_s"], 1) for o in outs],
            "max_rss_mb": statistics.median(o["max_rss_mb"] for o in outs)} for m in models}
    print(f"\n{'variant':<9} {'model':<10} {'img/s':>9} {'vs default':>10} {'img/CPU s':>10} "
          f"{'vs default':>10} {'user s':>8} {'sys s':>7} {'sys %':>6} {'faults/s':>10} "
          f"{'max RSS MB':>11}")
    for variant, per_model in summary.items():
        for model, v in per_model.items():
            base = summary.get("default", {}).get(model, {})
            for key in ("img_s", "img_per_cpu_s"):
                v[f"{key}_vs_default"] = (round(v[key] / base[key], 3) if base.get(key)
                                          else None)
            ratio, cpu_ratio = (f"{v[k]:.3f}" if v[k] else "-"
                                for k in ("img_s_vs_default", "img_per_cpu_s_vs_default"))
            print(f"{variant:<9} {model:<10} {v['img_s']:>9,.1f} {ratio:>10} "
                  f"{v['img_per_cpu_s']:>10,.1f} {cpu_ratio:>10} "
                  f"{v['user_s']:>8.2f} {v['sys_s']:>7.2f} {v['sys_share']:>6.1%} "
                  f"{v['faults_per_s']:>10,.0f} {v['max_rss_mb']:>11,.0f}")
    print(json.dumps({"compare_malloc": summary, "rounds": args.compare_malloc,
                      "load_after": round(os.getloadavg()[0], 2)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_IMAGES} images (or fewer) and {QUICK_STEPS} steps")
    parser.add_argument("--models", default="simple_v3,fastnet",
                        help="comma-separated model names")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per measurement (default: "
                             + ", ".join(f"{m} {s}" for m, s in DEFAULT_STEPS.items())
                             + f", others {FALLBACK_STEPS}; --quick: {QUICK_STEPS})")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps before each measurement (default 2; --quick: 1)")
    parser.add_argument("--limit", type=int, default=None,
                        help=f"use this many images (a seeded subset); --quick: {QUICK_IMAGES}")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="decode cache folder (default: <temp>/imgcls-benchmark-cache)")
    parser.add_argument("--device", default=None,
                        help="default: cuda when available, else cpu")
    parser.add_argument("--compile", action="store_true",
                        help="also time imgcls's loop with the model torch.compile'd")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for everything, the roof included (default: "
                             "torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--loops", default=",".join(LOOPS),
                        help="comma-separated: imgcls (always), tutorial")
    parser.add_argument("--malloc", choices=("default", "mallopt"), default="default",
                        help="mallopt: runtime.keep_freed_memory() at start (what imgcls "
                             "train does; default: glibc's defaults)")
    parser.add_argument("--compare-malloc", type=int, default=0, metavar="ROUNDS",
                        help="run this script (imgcls's loop, one repeat) in a subprocess per "
                             "--malloc-variants entry, ROUNDS times in alternating order, and "
                             "compare img/s, user/system time and page faults")
    parser.add_argument("--malloc-variants", default=",".join(MALLOC_VARIANTS),
                        help="default, mallopt (--malloc mallopt), thp (PyTorch's "
                             "THP_MEM_ALLOC_ENABLE=1: 2 MB pages for large tensors)")
    args = parser.parse_args()
    if args.compare_malloc:
        variants = [v.strip() for v in args.malloc_variants.split(",") if v.strip()]
        if not variants or any(v not in MALLOC_VARIANTS for v in variants):
            parser.error(f"--malloc-variants: expected some of {', '.join(MALLOC_VARIANTS)}")
        compare_malloc(args, variants)
        return
    if args.malloc == "mallopt" and not keep_freed_memory():
        print("warning: mallopt is not available (not glibc?): the default allocator runs",
              flush=True)
    loops = [x.strip() for x in args.loops.split(",") if x.strip()]
    if any(x not in LOOPS for x in loops):
        parser.error(f"--loops: expected some of {', '.join(LOOPS)}")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be positive")
        torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    limit = args.limit if args.limit is not None else (QUICK_IMAGES if args.quick else None)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if not models:
        parser.error("--models names no model")
    if args.repeats < 1 or args.batch_size < 1 or warmup < 0 or (args.steps or 1) < 1 or (
            limit is not None and limit < 1):
        parser.error("--repeats, --batch-size, --steps and --limit must be positive")

    def steps_for(model: str) -> int:
        if args.steps is not None:
            return args.steps
        return QUICK_STEPS if args.quick else DEFAULT_STEPS.get(model, FALLBACK_STEPS)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    load_before = os.getloadavg()
    folder = resolve_folder(args.data)
    samples, classes, indices, _ = pick_samples(folder, limit)
    print(f"data: {folder} ({len(samples)} images, {len(classes)} classes)", flush=True)
    print(f"batch {args.batch_size}, {args.repeats} repeats, warm-up {warmup} steps, device "
          f"{device}, torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, load "
          f"average {load_before[0]:.2f}", flush=True)

    cache_dir = (args.cache_dir or Path(tempfile.gettempdir()) / "imgcls-benchmark-cache")
    cache_dir = cache_dir.expanduser()
    cache_dir.mkdir(parents=True, exist_ok=True)
    dataset = ImageFileDataset(samples, classes, root=str(folder))
    images, labels, decode_s, was_cached = timed_decode(dataset, cache_dir)
    print(f"imgcls decode_to_tensor: {decode_s:.2f}s" + (" (cache hit)" if was_cached else "")
          + f", cache {cache_dir}", flush=True)

    roof: list[float] = matmul_gflops(device)
    results: dict[str, dict[str, Any]] = {}
    rows: dict[str, dict[str, list[float]]] = {}
    usage: dict[str, dict[str, list[dict[str, float]]]] = {}
    for model_name in models:
        steps = steps_for(model_name)
        cfg = recipe_config(model_name, args.batch_size)
        memory = MemoryLoader(
            images, labels, batch_size=args.batch_size, train=True, shuffle=True,
            seed=args.seed, device=device, mean_std=(CIFAR_MEAN, CIFAR_STD),
            crop_padding=PADDING, hflip=0.5,
        )
        torch.manual_seed(args.seed)
        # as imgcls train builds it (fastnet's whitening stem set from the data), then in the
        # default memory format: the tutorial loop gets a plain copy, imgcls's run converts its own
        base = components.build_model(cfg, len(classes), device, train_loader=memory)
        base = base.to(memory_format=torch.contiguous_format)
        sample_images, sample_labels = next(iter(memory))
        flops = step_flops(base, create_loss(cfg.optim).to(device), sample_images,
                           sample_labels)
        flop_per_img = flops / sample_images.shape[0]

        runs: dict[str, ImgclsRun | TutorialRun] = {
            "imgcls": ImgclsRun(copy.deepcopy(base), cfg, memory, device)}
        if "tutorial" in loops:
            runs["tutorial"] = TutorialRun(copy.deepcopy(base), cfg.optim.lr,
                                           tutorial_loader(folder, indices, args.batch_size),
                                           device)
        compile_s = None
        if args.compile:
            compiled_memory = MemoryLoader(
                images, labels, batch_size=args.batch_size, train=True, shuffle=True,
                seed=args.seed, device=device, mean_std=(CIFAR_MEAN, CIFAR_STD),
                crop_padding=PADDING, hflip=0.5,
            )
            compiled = ImgclsRun(copy.deepcopy(base), cfg, compiled_memory, device,
                                 compile_model=True)
            compile_s, _ = compiled.run(1)  # the first step compiles
            print(f"{model_name} torch.compile + first step: {compile_s:.1f}s", flush=True)
            runs["imgcls+compile"] = compiled
        rows[model_name] = {name: [] for name in runs}
        usage[model_name] = {name: [] for name in runs}
        print(f"{model_name}: {flop_per_img / 1e6:.1f} MFLOP per image per training step, "
              f"{steps} steps per measurement", flush=True)
        for r in range(args.repeats):
            order = list(runs) if r % 2 == 0 else list(reversed(runs))
            for name in order:
                run = runs[name]
                if warmup:
                    run.run(warmup)
                before = cpu_usage()
                seconds, count = run.run(steps)
                used = usage_delta(before, seconds, steps, count)
                rows[model_name][name].append(count / seconds)
                usage[model_name][name].append(used)
                print(f"repeat {r + 1}/{args.repeats} {model_name} {name}: {seconds:.2f}s "
                      f"{count} images {count / seconds:,.1f} img/s (loss {run.last_loss:.3f}); "
                      f"user {used['user_s']:.2f}s sys {used['sys_s']:.2f}s "
                      f"({used['sys_share']:.1%}), {used['faults_per_s']:,.0f} page faults/s",
                      flush=True)
            roof += matmul_gflops(device)
        for name, run in runs.items():
            if not math.isfinite(run.last_loss):
                print(f"warning: {model_name} {name}'s loss is {run.last_loss}", flush=True)
        ours = statistics.median(rows[model_name]["imgcls"])
        theirs = statistics.median(rows[model_name]["tutorial"]) if "tutorial" in runs else None
        results[model_name] = {
            "imgcls_img_s": ours,
            "tutorial_img_s": theirs,
            "ratio": ours / theirs if theirs else None,
            "gflops": flop_per_img * ours / 1e9,
            "mflop_per_img": flop_per_img / 1e6,
            "steps": steps,
            "imgcls_runs": [round(v, 1) for v in rows[model_name]["imgcls"]],
            "tutorial_runs": [round(v, 1) for v in rows[model_name].get("tutorial", [])],
            # user and system CPU seconds, page faults: medians per measurement, per loop
            "cpu": {name: median_usage(used) for name, used in usage[model_name].items()},
        }
        if args.compile:
            results[model_name]["imgcls_compile_img_s"] = statistics.median(
                rows[model_name]["imgcls+compile"])
            results[model_name]["compile_s"] = compile_s

    roof_gflops = statistics.median(roof)
    for r in results.values():
        r["roof_gflops"] = roof_gflops
        r["utilisation"] = r["gflops"] / roof_gflops
    load_after = os.getloadavg()
    print()
    print(table(results, rows))
    print(f"\nroof: fp32 {ROOF_N}x{ROOF_N} torch.mm, median of {len(roof)} timings "
          f"{roof_gflops:.1f} GFLOP/s (min {min(roof):.1f}, max {max(roof):.1f}); one-time "
          f"decode {decode_s:.2f}s for {len(samples)} images; load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after")

    def rounded(value: Any) -> Any:
        return round(value, 3) if isinstance(value, float) else value

    out: dict[str, Any] = {m: {k: rounded(v) for k, v in r.items()} for m, r in results.items()}
    out.update({
        "roof_gflops": round(roof_gflops, 3),
        "decode_s": round(decode_s, 6),
        "decode_was_cached": was_cached,
        "images": len(samples),
        "batch_size": args.batch_size,
        "warmup_steps": warmup,
        "repeats": args.repeats,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "load_before": round(load_before[0], 2),
        "load_after": round(load_after[0], 2),
        "quick": args.quick,
        "malloc": args.malloc,
        # peak resident memory of the whole process (Linux reports kB)
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    })
    print(json.dumps(out))


if __name__ == "__main__":
    main()
