"""Training steps per second on the CPU in fp32 against bfloat16 autocast (and, with
``--compile``, ``torch.compile``), measured side by side in one run: does ``train.amp=bf16`` pay
on this CPU?

Each model trains on random images of its size (the step's cost does not depend on the pixels):
imgcls's model, channels-last, Nesterov SGD with foreach kernels, cross-entropy, as
``imgcls train`` builds them. Every variant starts from the same weights; repeats alternate the
variants' order (a machine that slows down slows all of them), and medians are reported. The CPU's
native bfloat16 support (``imgcls.runtime.native_bf16``: AVX512-BF16, AMX-BF16) is printed first;
without it, bf16 autocast is emulated and several times slower than fp32.

    python benchmarks/cpu_precision.py                   # fastnet_s at 32 px (batch 256),
                                                         # resnet18 at 128 px (batch 64)
    python benchmarks/cpu_precision.py --compile         # adds torch.compile rows (fp32, bf16)
    python benchmarks/cpu_precision.py --models resnet18 --steps 5 --repeats 1   # quick
    python benchmarks/cpu_precision.py --models timm/convnext_atto   # a timm model (needs timm)

The last line is one JSON object: per model and variant the median steps/s and images/s, and
the ratios to fp32.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from contextlib import nullcontext

import torch
from torch import nn

from imgcls.config import ModelConfig
from imgcls.models import create_model
from imgcls.runtime import native_bf16

SIZES = {"fastnet_s": (32, 256), "resnet18": (128, 64)}  # model -> (image size, batch)


def make_step(model: nn.Module, bf16: bool):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                                foreach=True)
    loss_fn = nn.CrossEntropyLoss()

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
        with autocast:
            loss = loss_fn(model(images), labels)
        loss.backward()
        optimizer.step()

    return step


def build(name: str) -> nn.Module:
    """imgcls's model ``name``, or timm's for ``timm/NAME`` (timm imported only then)."""
    if name.startswith("timm/"):
        import timm

        return timm.create_model(name.removeprefix("timm/"), num_classes=10)
    return create_model(ModelConfig(name=name), 10)


def variants(name: str, size: int, use_compile: bool) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    base = build(name).to(memory_format=torch.channels_last).train()
    found = {"fp32": base, "bf16": copy.deepcopy(base)}
    if use_compile:
        found["fp32_compiled"] = torch.compile(copy.deepcopy(base))
        found["bf16_compiled"] = torch.compile(copy.deepcopy(base))
    return found


def measure(args: argparse.Namespace) -> dict[str, dict[str, dict[str, float]]]:
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name in args.models.split(","):
        size, batch = SIZES.get(name, (args.size, args.batch_size))
        images = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
        labels = torch.randint(0, 10, (batch,))
        steps = {k: make_step(m, k.startswith("bf16"))
                 for k, m in variants(name, size, args.compile).items()}
        for step in steps.values():  # warm-up (and compilation) outside the timing
            for _ in range(args.warmup):
                step(images, labels)
        times: dict[str, list[float]] = {k: [] for k in steps}
        for repeat in range(args.repeats):
            order = list(steps) if repeat % 2 == 0 else list(reversed(steps))
            for key in order:
                start = time.perf_counter()
                for _ in range(args.steps):
                    steps[key](images, labels)
                times[key].append(args.steps / (time.perf_counter() - start))
        rates = {k: statistics.median(v) for k, v in times.items()}
        results[name] = {k: {"steps_s": round(r, 3), "img_s": round(r * batch, 1),
                             "vs_fp32": round(r / rates["fp32"], 3)} for k, r in rates.items()}
        print(f"{name} ({size} px, batch {batch}): "
              + ", ".join(f"{k} {v['img_s']} img/s ({v['vs_fp32']}x)"
                          for k, v in results[name].items()), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="fastnet_s,resnet18")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=128, help="image size of other models")
    parser.add_argument("--batch-size", type=int, default=64, help="batch of other models")
    parser.add_argument("--compile", action="store_true", help="add torch.compile variants")
    args = parser.parse_args()
    native = native_bf16()
    print(f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
          f"threads, native bf16: {native or 'none'}; torch {torch.__version__}")
    results = measure(args)
    print(json.dumps({"native_bf16": native, "threads": torch.get_num_threads(),
                      "results": results}))


if __name__ == "__main__":
    main()
