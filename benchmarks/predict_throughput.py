"""Predict throughput on the CPU: eager PyTorch against ONNX Runtime, on the same images, measured
side by side in one run.

Each model gets a checkpoint with random weights (written the way training writes one), goes
through ``export_checkpoint`` (the path ``imgcls export`` takes, verification included), and both
the eager model (``load_model``, ``torch.inference_mode``) and the ONNX file (ONNX Runtime, CPU
provider, as many intra-op threads as torch uses) classify the same batch, preprocessed once by
the checkpoint's evaluation transform. Eager and ONNX repeats alternate, so a machine that slows
down during the run slows both; the median of the repeats is reported. A short pause comes before
every timed block: both runtimes' worker threads spin for a while after a call, and on a small
machine the spinning threads of one runtime steal cores from the other (measured here: eager
resnet18 ran up to 20% slower right after ONNX Runtime calls than after a 0.1 s pause).

    python benchmarks/predict_throughput.py           # simple_v3 @ 32 px, resnet18 @ 224 px,
                                                      # batch 1 and 64 (about 2 minutes)
    python benchmarks/predict_throughput.py --quick   # a few seconds: batch 1 and 8, 2 repeats
    python benchmarks/predict_throughput.py --models simple_v3 --batches 1 --quick

Prints a table, then as its last line one JSON object:
``{"simple_v3": {"b1": {"eager_img_s": ..., "onnx_img_s": ..., "ratio": ...}, ...}, ...}``
where ratio = onnx_img_s / eager_img_s (above 1: ONNX Runtime is faster).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from imgcls.config import build_config
from imgcls.data.transforms import resolve_normalization
from imgcls.deploy.export import export_checkpoint, onnx_session
from imgcls.deploy.load import load_model
from imgcls.models import create_model, get_model_info
from imgcls.runs.record import CheckpointRecord

MODELS = {"simple_v3": 32, "resnet18": 224}  # model -> input size
NUM_CLASSES = 10


def write_checkpoint(name: str, size: int, path: Path, num_classes: int = NUM_CLASSES) -> Path:
    """A checkpoint of a randomly initialised ``name``, as training writes one but without the
    optimiser and scheduler state (nothing here resumes from it)."""
    cfg = build_config(overrides={"model.name": name, "transforms.image_size": size})
    info = get_model_info(name)
    mean_std = resolve_normalization(cfg.transforms, model_default=info.default_normalize,
                                     pretrained=False, dataset_mean_std=None)
    torch.manual_seed(0)
    model = create_model(cfg.model, num_classes)
    CheckpointRecord(
        model=model.state_dict(), config=cfg.to_dict(),
        classes=[f"class_{k}" for k in range(num_classes)], input_size=size,
        in_channels=cfg.model.in_channels,
        mean=mean_std[0] if mean_std else None, std=mean_std[1] if mean_std else None,
        provenance={"note": "random weights, written by benchmarks/predict_throughput.py"},
    ).save(path)
    return path


def _calls_per_repeat(call: Callable[[], Any], seconds: float, warmup: int) -> int:
    """Warm up (allocator, ORT's first-run graph work, oneDNN kernels), then size a repeat."""
    for _ in range(warmup):
        call()
    start = time.perf_counter()
    call()
    once = time.perf_counter() - start
    return max(1, round(seconds / max(once, 1e-6)))


def _images_per_second(call: Callable[[], Any], calls: int, batch: int, pause: float) -> float:
    time.sleep(pause)  # let the other runtime's spinning worker threads go idle
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return calls * batch / (time.perf_counter() - start)


def measure(name: str, size: int, batches: Sequence[int], folder: Path, *, repeats: int,
            seconds: float, warmup: int, pause: float) -> dict[str, dict[str, float]]:
    """Eager and ONNX Runtime images/s of ``name`` for each batch size (medians)."""
    checkpoint = write_checkpoint(name, size, folder / f"{name}.pt")
    report = export_checkpoint(checkpoint, fmt="onnx", output=folder / f"{name}.onnx")
    print(f"{name}: exported, max abs diff vs eager {report.max_abs_diff:.2g}", flush=True)
    loaded = load_model(checkpoint, device="cpu")
    transform = loaded.eval_transform()
    session = onnx_session(report.path, threads=torch.get_num_threads())
    input_name = session.get_inputs()[0].name

    results: dict[str, dict[str, float]] = {}
    generator = torch.Generator().manual_seed(0)
    for batch in batches:
        raw = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)
        images = torch.stack([transform(img) for img in raw]).contiguous()
        array = images.numpy()  # shares memory: both runtimes read the very same floats

        def eager(images: torch.Tensor = images) -> None:
            with torch.inference_mode():
                loaded.model(images)

        def onnx(array: Any = array) -> None:
            session.run(None, {input_name: array})

        calls = {"eager": _calls_per_repeat(eager, seconds, warmup),
                 "onnx": _calls_per_repeat(onnx, seconds, warmup)}
        rates: dict[str, list[float]] = {"eager": [], "onnx": []}
        for _ in range(repeats):  # alternate, so drift in machine speed hits both alike
            rates["eager"].append(_images_per_second(eager, calls["eager"], batch, pause))
            rates["onnx"].append(_images_per_second(onnx, calls["onnx"], batch, pause))
        eager_rate = statistics.median(rates["eager"])
        onnx_rate = statistics.median(rates["onnx"])
        results[f"b{batch}"] = {
            "eager_img_s": round(eager_rate, 1),
            "onnx_img_s": round(onnx_rate, 1),
            "ratio": round(onnx_rate / eager_rate, 3),
        }
        spread = {k: (min(v), max(v)) for k, v in rates.items()}
        print(f"  batch {batch}: eager {eager_rate:.1f} img/s "
              f"(range {spread['eager'][0]:.1f}-{spread['eager'][1]:.1f}, {calls['eager']} "
              f"calls x {repeats}), onnx {onnx_rate:.1f} img/s "
              f"(range {spread['onnx'][0]:.1f}-{spread['onnx'][1]:.1f}, {calls['onnx']} "
              f"calls x {repeats})", flush=True)
    return results


def _table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    rows = [f"{'model':<10} {'size':>4} {'batch':>5} {'eager img/s':>12} {'onnx img/s':>11} "
            f"{'onnx/eager':>10}"]
    for name, by_batch in results.items():
        for key, r in by_batch.items():
            rows.append(f"{name:<10} {MODELS[name]:>4} {key[1:]:>5} {r['eager_img_s']:>12.1f} "
                        f"{r['onnx_img_s']:>11.1f} {r['ratio']:>9.2f}x")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a run of a few seconds")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int,
                        help="batch sizes (default 1 64; --quick: 1 8)")
    parser.add_argument("--repeats", type=int, help="timed repeats per backend (default 5)")
    parser.add_argument("--seconds", type=float, help="seconds per repeat (default 1.5)")
    parser.add_argument("--threads", type=int, help="torch and ONNX Runtime threads")
    args = parser.parse_args(argv)
    batches = args.batches or ([1, 8] if args.quick else [1, 64])
    repeats = args.repeats or (2 if args.quick else 5)
    seconds = args.seconds or (0.05 if args.quick else 1.5)
    warmup = 1 if args.quick else 3
    pause = 0.02 if args.quick else 0.2
    if args.threads:
        torch.set_num_threads(args.threads)

    import onnxruntime

    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.machine()}; "
          f"{repeats} repeats of ~{seconds}s per backend, median", flush=True)
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="imgcls-bench-") as tmp:
        for name in args.models:
            results[name] = measure(name, MODELS[name], batches, Path(tmp), repeats=repeats,
                                    seconds=seconds, warmup=warmup, pause=pause)
    print(_table(results))
    print(json.dumps(results), flush=True)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
