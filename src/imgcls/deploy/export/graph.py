"""The exported graph's interface: its input (float32 normalised images, or uint8 pixels with
the :class:`Preprocess` wrapper in the graph), names, example and verification batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from imgcls.config.sizes import ImageSize, size_hw
from imgcls.data.transforms import _channels

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
PROBABILITIES_NAME = "probabilities"  # a multi-label model's output (SigmoidScores)
EXPORT_BATCH = 2  # the example batch the graph is built with
VERIFY_BATCHES = (3, 1)  # neither is EXPORT_BATCH, so a baked-in batch size cannot pass
VERIFY_SEED = 0

class Preprocess(nn.Module):
    """uint8 ``[N, C, H, W]`` images -> resize to ``size`` (H, W) -> [0, 1] -> normalise ->
    ``model``.

    The arithmetic mirrors the evaluation transform (``v2.ToDtype(scale=True)`` multiplies by
    1/255, ``v2.Normalize`` subtracts the mean then divides by the std) so that the exported
    graph and training's preprocessing agree to the last bit on images already at ``size``.
    """

    def __init__(
        self, model: nn.Module, size: ImageSize,
        mean_std: tuple[list[float], list[float]] | None, in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.model = model
        self.size = size_hw(size)
        self.normalize = mean_std is not None
        mean, std = mean_std if mean_std is not None else ([0.0], [1.0])
        shape = (1, -1, 1, 1)
        self.register_buffer("mean", torch.tensor(_channels(mean, in_channels)).view(shape))
        self.register_buffer("std", torch.tensor(_channels(std, in_channels)).view(shape))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32)
        # Always resize, even to the same size (then it is the identity): a Python branch on the
        # input shape would be frozen into a traced graph at the example's size.
        x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False,
                          antialias=False)
        x = x * (1.0 / 255.0)
        if self.normalize:
            x = (x - self.mean) / self.std
        return self.model(x)


class SigmoidScores(nn.Module):
    """A multi-label model's exported output: each class's sigmoid probability, to compare with
    the sidecar's per-class thresholds (a softmax over classes would make them compete)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(x))


@dataclass
class _InputSpec:
    dtype: torch.dtype
    shape: list[int | str]  # "N", "H", "W" for dynamic dimensions
    dynamic: dict[int, str]  # dimension index -> name

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def describe(self) -> str:
        return f"{self.dtype_name} [{', '.join(str(d) for d in self.shape)}]"


def _input_spec(channels: int, size: ImageSize, include_preprocess: bool) -> _InputSpec:
    if include_preprocess:
        return _InputSpec(torch.uint8, ["N", channels, "H", "W"],
                          {0: "batch", 2: "height", 3: "width"})
    return _InputSpec(torch.float32, ["N", channels, *size_hw(size)], {0: "batch"})


def _random_input(spec: _InputSpec, batch: int, height: int, width: int,
                  generator: torch.Generator) -> torch.Tensor:
    channels = int(spec.shape[1])
    if spec.dtype == torch.uint8:
        return torch.randint(0, 256, (batch, channels, height, width), generator=generator,
                             dtype=torch.uint8)
    # Normalised images are roughly zero-mean, unit-variance.
    return torch.randn(batch, channels, height, width, generator=generator)
