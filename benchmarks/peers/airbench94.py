"""airbench94 (Keller Jordan's ``airbench`` package from PyPI, 0.1.8) as the peer of
``benchmarks/time_to_accuracy.py --peer airbench94``: its own code and hyperparameters, trained
and validated on the images imgcls trains and validates on.

Reused unchanged: ``airbench.train94`` and the loop it calls (``airbench.utils.train``: the
network ``make_net94``, the whitening-stem initialisation from the first 5,000 training images,
Nesterov SGD with its decoupled lr / weight decay and 64x BatchNorm-bias lr, label smoothing 0.2,
the triangular lr schedule, Lookahead every 5 steps, the bias freeze after 3 epochs, 9.9 epochs
at batch 1024), ``hyp`` (every value), ``CifarLoader`` (its normalisation with CIFAR-10's
mean/std, reflect-padded translate-by-2, alternating flip, shuffling, ``drop_last``) built with
the arguments ``train94`` gives it, and ``evaluate`` (its TTA levels 0, 1, 2).

Shimmed at run time (undone afterwards), nothing else:

- the data: ``CifarLoader`` reads ``<path>/train.pt`` / ``test.pt`` (downloading CIFAR-10 when
  they are missing). They are written here in its own format (uint8 NHWC images, labels, class
  names) from imgcls's decoded images of the split imgcls uses, and every ``CifarLoader``
  (including the test loader ``train`` builds with the hard-coded path ``cifar10``) reads that
  folder onto the training device. The training images are stored in a seeded random order:
  airbench's whitening stem is fitted to the first 5,000, which in CIFAR's own files are a mix
  of all classes, and in imgcls's folder order would be two classes only.
- per-epoch accuracy: ``airbench.utils.print_training_details``, which ``train`` calls after
  every epoch with its local variables, is wrapped to record them (still printing its table).
  With ``tta_level`` > 0 the wrapper also scores the model with airbench's ``evaluate`` at that
  level (its time is left out of ``elapsed_s``, as is writing the data files), to compare with
  an imgcls run validating with the same test-time augmentation.
- off CUDA only: ``torch.cuda.Event`` / ``torch.cuda.synchronize`` become a wall-clock event and
  a no-op, ``Module.cuda()`` moves to the CPU, and ``Module.half()`` / ``Tensor.half()`` give
  float32 (CPUs train fp32, as imgcls does there: ``train.amp=auto`` is off on CPUs). On CUDA
  airbench runs natively (fp16, its CUDA-event timing).

Not done: airbench's untimed warm-up run (``warmup94``); imgcls's runs have none either.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import nn

TTA_LEVELS = {"none": 0, "flip": 1, "flip_translate": 2}  # imgcls train.tta -> airbench's


class _WallEvent:
    """``torch.cuda.Event(enable_timing=True)`` for the CPU: ``record`` reads the wall clock."""

    def __init__(self, enable_timing: bool = False, **_: Any) -> None:
        self.t = 0.0

    def record(self, stream: Any = None) -> None:
        self.t = time.perf_counter()

    def elapsed_time(self, end: _WallEvent) -> float:
        return (end.t - self.t) * 1e3  # milliseconds, as CUDA events report


def _redirected_loader(base: type, folder: Path, device: torch.device) -> type:
    """``CifarLoader`` reading ``folder`` onto ``device``, whatever path and gpu it is given."""

    class Loader(base):  # type: ignore[misc, valid-type]
        def __init__(self, path: str, *args: Any, **kwargs: Any) -> None:
            kwargs["gpu"] = device  # torch.load's map_location; airbench's default is cuda:0
            super().__init__(str(folder), *args, **kwargs)

    return Loader


@contextmanager
def _shims(ab: Any, folder: Path, device: torch.device, record: Any) -> Iterator[type]:
    """The patches listed in the module docstring; yields the redirected CifarLoader."""
    loader = _redirected_loader(ab.utils.CifarLoader, folder, device)
    with ExitStack() as stack:
        patch = stack.enter_context
        patch(mock.patch.object(ab.utils, "CifarLoader", loader))
        patch(mock.patch.object(ab.utils, "print_training_details", record))
        if device.type != "cuda":
            patch(mock.patch.object(torch.cuda, "Event", _WallEvent))
            patch(mock.patch.object(torch.cuda, "synchronize", lambda *a, **k: None))
            patch(mock.patch.object(nn.Module, "cuda", lambda self, *a, **k: self.to(device)))
            patch(mock.patch.object(nn.Module, "half", lambda self: self.float()))
            patch(mock.patch.object(torch.Tensor, "half", lambda self, *a, **k: self.float()))
        yield loader


def write_data(folder: Path, images: torch.Tensor, labels: torch.Tensor, classes: list[str],
               name: str, shuffle_seed: int | None = None) -> None:
    """``folder/name`` in the format airbench's CifarLoader saves after its download: uint8
    ``[N, H, W, C]`` images, int64 labels, class names. ``images`` is imgcls's uint8
    ``[N, C, H, W]``; with ``shuffle_seed`` the images are stored in a seeded random order."""
    if shuffle_seed is not None:
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(shuffle_seed))
        images, labels = images[order], labels[order]
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"images": images.permute(0, 2, 3, 1).contiguous(),
                "labels": labels.to(torch.int64).clone(), "classes": list(classes)},
               folder / name)


def run(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    classes: list[str],
    *,
    device: torch.device,
    folder: Path,
    start: float | None = None,
    epochs: float | None = None,
    batch_size: int | None = None,
    tta_level: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """Train airbench94 on ``train`` (uint8 ``[N, 3, 32, 32]`` images, labels), validating on
    ``val`` after every epoch; ``folder`` receives its data files.

    ``epochs`` and ``batch_size`` default to airbench's (9.9 and 1024); ``start`` is the
    ``time.perf_counter()`` that ``elapsed_s`` counts from (default: now). Returns ``rows`` (per
    epoch: ``epoch``, ``val_acc`` (airbench's own, no TTA), ``val_acc_tta`` (at ``tta_level``,
    when > 0), ``train_loss``, ``train_acc`` (its last batch's), ``train_s`` (airbench's own
    clock: training only), ``elapsed_s`` (wall time since ``start``)), ``final`` (accuracy at
    each TTA level), ``train_seconds``, ``total_seconds`` and the settings used.
    """
    try:
        import airbench
        import airbench.utils  # noqa: F401 (the module patched below)
    except ImportError:
        raise SystemExit("the airbench94 peer needs airbench: pip install -e '.[bench]'") from None
    start = time.perf_counter() if start is None else start
    if len(classes) != 10:  # make_net94's head is Linear(256, 10): other classes score wrongly
        print(f"warning: airbench94 is built for 10 classes, the data has {len(classes)}",
              flush=True)
    hyp = airbench.lib_airbench94.hyp
    epochs = hyp["opt"]["train_epochs"] if epochs is None else epochs
    batch_size = hyp["opt"]["batch_size"] if batch_size is None else batch_size
    t0 = time.perf_counter()
    write_data(folder, *train, classes, "train.pt", shuffle_seed=seed)
    write_data(folder, *val, classes, "test.pt")

    rows: list[dict[str, Any]] = []
    seen: dict[str, Any] = {}
    # seconds not charged to the peer: writing its files (its own loader reads them, as it reads
    # its cached download) and the extra TTA evaluations
    left_out = [time.perf_counter() - t0]
    original = airbench.utils.print_training_details

    def record(variables: dict[str, Any], is_final_entry: bool) -> None:
        original(variables, is_final_entry)
        seen.update(model=variables["model"], test_loader=variables["test_loader"],
                    train_s=variables["total_time_seconds"])
        if not isinstance(variables.get("epoch"), int):  # 'eval': the final TTA evaluation
            seen["tta_val_acc"] = variables.get("tta_val_acc")
            return
        row = {"epoch": variables["epoch"] + 1, "val_acc": variables["val_acc"],
               "train_loss": variables["train_loss"], "train_acc": variables["train_acc"],
               "train_s": round(variables["total_time_seconds"], 6),
               "elapsed_s": round(time.perf_counter() - start - left_out[0], 6)}
        if tta_level > 0:
            t0 = time.perf_counter()
            row["val_acc_tta"] = airbench.utils.evaluate(variables["model"],
                                                         variables["test_loader"], tta_level)
            left_out[0] += time.perf_counter() - t0
        rows.append(row)
        tta = f", TTA level {tta_level} {row['val_acc_tta']:.4f}" if tta_level > 0 else ""
        print(f"airbench94 epoch {row['epoch']}: val_acc {row['val_acc']:.4f}{tta}, "
              f"train {row['train_s']:.1f}s, elapsed {row['elapsed_s']:.1f}s", flush=True)

    with _shims(airbench, folder, device, record) as loader_class:
        torch.manual_seed(seed)  # airbench draws its shuffles and flips from the global RNG
        train_loader = loader_class("cifar10", train=True, batch_size=batch_size,
                                    aug=hyp["aug"], altflip=True)
        model = airbench.train94(train_loader, epochs=epochs, run=0, verbose=True)
        total = time.perf_counter() - start - left_out[0]
        final = {name: (seen["tta_val_acc"] if level == hyp["net"]["tta_level"] else
                        airbench.utils.evaluate(model, seen["test_loader"], level))
                 for name, level in TTA_LEVELS.items()}
    return {
        "rows": rows,
        "final": final,
        "train_seconds": round(seen["train_s"], 6),
        "total_seconds": round(total, 6),
        "epochs": epochs,
        "batch_size": batch_size,
        "tta_level": tta_level,
        "train_images": len(train[0]),
        "val_images": len(val[0]),
        "device": str(device),
        "precision": "fp16 (native)" if device.type == "cuda" else "fp32 (CPU shim)",
        "airbench_version": getattr(airbench, "__version__", None) or _version("airbench"),
    }


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None
