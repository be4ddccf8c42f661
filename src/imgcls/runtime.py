"""The one place that decides the device, seeds every RNG, switches determinism on and sets up
distributed training (torchrun + DistributedDataParallel).

Nothing else in imgcls picks a device or calls ``.cuda()``: the training code asks for
``runtime.device`` and moves tensors there.
"""

from __future__ import annotations

import datetime
import functools
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from imgcls.errors import ImgclsError, short_repr


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; a named device must exist.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ImgclsError(
            f"unknown device {short_repr(name)}: expected auto, cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ImgclsError(f"train.device={short_repr(name)} but CUDA is not available on this "
                              "machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ImgclsError(
                f"train.device={short_repr(name)} but only {torch.cuda.device_count()} CUDA "
                "device(s) exist"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ImgclsError(f"train.device={short_repr(name)} but MPS is not available on this "
                          "machine")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device) from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


SEED_STRIDE = 1_000_003  # a prime far above any epoch count: seed s never meets seed s + 1


def stream_seed(seed: int, stream: int) -> int:
    """The seed of ``seed``'s stream number ``stream`` (an epoch's shuffle or augmentation, or
    a fixed tag): every random stream of imgcls is seeded here, so seeds 0 and 1 never share
    one (seed 1 at epoch 0 is not seed 0 at epoch 1).

    >>> stream_seed(1, 0) != stream_seed(0, 1)
    True
    """
    return seed * SEED_STRIDE + stream


def augmentation_seed(seed: int, rank: int, epoch: int) -> int:
    """The memory loader's augmentation draws of an epoch on rank ``rank``: per rank (seed +
    rank), as the DataLoader's worker seeds are, and kept apart from the shuffle's stream."""
    return stream_seed(seed + rank, epoch) * 7 + 3


def rank_epoch_seed(seed: int, rank: int, world_size: int, epoch: int) -> int:
    """A distinct seed per (seed, epoch, rank): seeds 0 and 1 never share an epoch's streams."""
    return stream_seed(seed, epoch) * world_size + rank


def configure_determinism(deterministic: bool) -> None:
    """Deterministic kernels when asked (same weights on every run); otherwise the fastest ones."""
    if deterministic:
        # cuBLAS needs this set before its first use to be deterministic.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def configure_speed(device: torch.device, *, cudnn_benchmark: bool, deterministic: bool,
                    tf32: bool = True) -> None:
    """CUDA kernel choices: autotuned convolutions and TF32 matmuls, unless determinism is asked
    for (both change results from run to run or in the last bits) or ``tf32`` is off."""
    fast = not deterministic
    torch.backends.cudnn.benchmark = cudnn_benchmark and fast
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32 and fast
        torch.backends.cudnn.allow_tf32 = tf32 and fast


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """``train.amp`` on ``device``: the autocast dtype, or None for full fp32.

    ``auto`` is bf16 on GPUs that run it natively (Ampere and later), fp16 (with a grad scaler)
    on older GPUs, bf16 on CPUs with native bfloat16 (:func:`native_bf16`: 2.2-2.5x fp32's
    training steps/s here, ``benchmarks/cpu_precision.py``), and off on other CPUs, where bf16
    is emulated and several times slower, and on MPS. An explicit ``train.amp=bf16`` still
    turns it on anywhere. The weights, their gradients, the optimiser, BatchNorm's statistics,
    the EMA and the checkpoints stay fp32 under autocast; the loss is computed in fp32.
    """
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and native_bf16():
        return torch.bfloat16
    return None


# /proc/cpuinfo flags of the CPU features that compute bfloat16 in hardware, best first.
NATIVE_BF16_FLAGS = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX512-BF16"}


@functools.cache
def native_bf16() -> str:
    """The CPU feature that runs bfloat16 matmuls and convolutions natively (``AMX-BF16``,
    ``AVX512-BF16``), from Linux's ``/proc/cpuinfo``; "" without one (or elsewhere)."""
    try:
        return bf16_feature(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return ""


def bf16_feature(cpuinfo: str) -> str:
    """:func:`native_bf16` of a ``/proc/cpuinfo`` text.

    >>> bf16_feature("flags\t: fpu sse2 avx512f avx512_bf16 amx_tile amx_bf16")
    'AMX-BF16'
    """
    flags = next((line.partition(":")[2].split() for line in cpuinfo.splitlines()
                  if line.startswith("flags")), [])
    return next((name for flag, name in NATIVE_BF16_FLAGS.items() if flag in flags), "")


def describe_amp(amp: str, device: torch.device) -> str:
    """The start line's words for ``train.amp`` on ``device``: "" for fp32."""
    dtype = autocast_dtype(amp, device)
    if dtype is None:
        return ""
    name = "bf16" if dtype == torch.bfloat16 else "fp16"
    why = f", this CPU has {native_bf16()}" if amp == "auto" and device.type == "cpu" else ""
    return f", {name} autocast (train.amp={amp}{why})"


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse: no mmap'd chunks, no heap trimming.

    Most tensors of a CPU training step at batch 1024 exceed glibc's largest mmap threshold
    (32 MB), so by default each is mmap'd, unmapped when freed, and faulted in and zeroed by the
    kernel again on the next step: 12-21% of the process's CPU time in the kernel, 40-80k page
    faults/s. Kept in the heap, the next step reuses them (fastnet_s, batch 1024, one thread:
    1.27x images/s, peak memory +7%; ``benchmarks/train_throughput.py --compare-malloc``).
    Process-wide, so the training commands (train, lr-find, cv, repeat, tune) call it at start;
    library users opt in. Returns False where it does not apply (not glibc).
    """
    import ctypes
    import ctypes.util

    m_trim_threshold, m_mmap_max = -1, -4  # glibc's <malloc.h>
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl without mallopt)
        return False
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def get_rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors, ints and tuples: ``torch.load(weights_only=True)`` reads it."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a torchrun job; ``world_size == 1`` when not under torchrun."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run folder and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def detect_dist() -> DistInfo:
    """Read torchrun's ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` (absent: one process).

    >>> detect_dist().world_size  # doctest: +SKIP
    1
    """
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise ImgclsError(f"bad torchrun environment (RANK/LOCAL_RANK/WORLD_SIZE): {exc}") from None
    if world < 1 or not 0 <= rank < world:
        raise ImgclsError(f"bad torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return DistInfo(rank=rank, local_rank=local, world_size=world)


@contextmanager
def distributed(device_name: str = "auto", timeout_min: float = 30.0) -> Iterator[
    tuple[DistInfo, torch.device]
]:
    """Join torchrun's process group (if any) for the body; always leave it afterwards.

    Yields ``(DistInfo, device)``. On CUDA each process is pinned to ``cuda:LOCAL_RANK`` and
    talks NCCL; elsewhere it is gloo. ``timeout_min`` bounds how long a collective waits for a
    rank that crashed or hangs. Errors and Ctrl-C still destroy the group (``finally``). A
    process group that the caller already set up is used as it is and left alone.
    """
    info = detect_dist()
    if not info.distributed:
        yield info, resolve_device(device_name)
        return
    if dist.is_initialized():  # the caller owns the group
        yield info, _rank_device(device_name, info)
        return
    device = _rank_device(device_name, info)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend=backend, timeout=datetime.timedelta(minutes=timeout_min),
        rank=info.rank, world_size=info.world_size,
    )
    try:
        yield info, device
    finally:
        dist.destroy_process_group()


def _rank_device(name: str, info: DistInfo) -> torch.device:
    device = resolve_device(name)
    if device.type == "cuda":
        if info.local_rank >= torch.cuda.device_count():
            raise ImgclsError(
                f"LOCAL_RANK={info.local_rank} but only {torch.cuda.device_count()} CUDA "
                "device(s) exist: start at most that many processes per machine"
            )
        return torch.device("cuda", info.local_rank)
    return device


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place (a no-op without a process group); returns it."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of ``tensor`` (``[n_rank, ...]``, n may differ), concatenated in rank
    order on every rank; ``tensor`` itself without a process group. Rows travel on the device
    the backend needs (CUDA for NCCL) and come back on ``tensor``'s."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return tensor
    device = torch.device("cuda", torch.cuda.current_device()) if (
        dist.get_backend() == "nccl") else torch.device("cpu")
    local = tensor.to(device)
    sizes = [torch.zeros(1, dtype=torch.int64, device=device)
             for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([len(local)], dtype=torch.int64, device=device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[:len(local)] = local
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:int(s.item())] for p, s in zip(parts, sizes, strict=True)]).to(
        tensor.device)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (unchanged without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside torch.compile's and DistributedDataParallel's wrappers (checkpoints hold
    its plain state_dict)."""
    while True:
        if isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model
