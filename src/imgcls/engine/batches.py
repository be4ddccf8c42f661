"""How batches run, in training and in evaluation alike: the speed switches (:class:`Speed`:
channels-last inputs, autocast) and the progress bar over a loader."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm


@dataclass(frozen=True)
class Speed:
    """How batches run: memory format and autocast dtype (``None``: fp32)."""

    channels_last: bool = False
    amp_dtype: torch.dtype | None = None

    def inputs(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        if self.channels_last and images.dim() == 4:
            return images.to(device, non_blocking=True, memory_format=torch.channels_last)
        return images.to(device, non_blocking=True)

    def autocast(self, device: torch.device) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device.type, dtype=self.amp_dtype)


def progress_bar(iterable: Iterable, total: int | None, desc: str, enabled: bool) -> Any:
    return tqdm(
        iterable, total=total, desc=desc, leave=False, disable=not enabled, dynamic_ncols=True
    )
