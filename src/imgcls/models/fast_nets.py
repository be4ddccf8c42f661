"""Networks built for accuracy per FLOP on 32x32 images, after Keller Jordan's airbench (2024).

The design, in the airbench94 spirit:

* a **whitening** stem: a frozen 2x2 convolution whose filters are the eigenvectors of the
  training images' 2x2-patch covariance, scaled by 1/sqrt(eigenvalue) (and their negatives, so
  a following GELU sees both signs). :meth:`FastNet.init_from_data` computes it from a few
  thousand training images before the first step; only its bias trains.
* three **conv groups**, each conv -> 2x2 max-pool -> BN -> GELU -> conv -> BN -> GELU, with few,
  wide stages (the spatial size halves in every group, so most FLOPs sit in wide, small maps
  that run at high matmul efficiency);
* BatchNorm with a frozen unit scale (only its bias trains), a fast-moving running average
  (momentum 0.4) and identity (Dirac) initialisation of the convolutions' first channels;
* a global max-pool and a bias-free linear head whose output is **scaled** by 1/9, which keeps
  the logits small at the very high learning rates of a short run.

``fastnet`` has airbench94's widths (64, 256, 256: 2.0M parameters, 0.24 GFLOP per forward at
32x32). ``fastnet_s`` halves them for CPU budgets.
"""

from __future__ import annotations

import torch
from torch import nn

from imgcls.registry import MODELS

_META = {"input_size": 32, "default_normalize": "dataset", "fixed_size": False, "min_size": 8}

WHITEN_KERNEL = 2
WHITEN_EPS = 5e-4  # added to the patch covariance's eigenvalues (airbench's value)
BN_MOMENTUM = 0.4  # torch's convention: running = (1 - m) * running + m * batch
OUTPUT_SCALE = 1 / 9


class FrozenScaleBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose scale is fixed at 1: the conv that follows any BN-GELU absorbs scale,
    so a trainable one only adds a parameter that weight decay and the lr fight over."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, eps=1e-12, momentum=BN_MOMENTUM)
        self.weight.requires_grad_(False)


class ConvGroup(nn.Sequential):
    """conv -> max-pool 2 -> BN -> GELU -> conv -> BN -> GELU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.MaxPool2d(2),
            FrozenScaleBatchNorm(cout),
            nn.GELU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            FrozenScaleBatchNorm(cout),
            nn.GELU(),
        )


class FastNet(nn.Module):
    """airbench-style CNN: whitening stem, three conv groups, max-pool, scaled linear head.

    >>> model = FastNet(10, widths=(32, 64, 64))
    >>> model(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """

    # model.freeze=N: the stem, then each conv group; `head` is the classifier.
    freeze_stages = (("whiten",), ("layer1",), ("layer2",), ("layer3",))

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        widths: tuple[int, int, int] = (64, 256, 256),
    ) -> None:
        super().__init__()
        stem = 2 * in_channels * WHITEN_KERNEL**2  # eigenvectors and their negatives
        self.whiten = nn.Conv2d(in_channels, stem, WHITEN_KERNEL, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        self.act = nn.GELU()
        self.layer1 = ConvGroup(stem, widths[0])
        self.layer2 = ConvGroup(widths[0], widths[1])
        self.layer3 = ConvGroup(widths[1], widths[2])
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(widths[2], num_classes, bias=False)
        self.output_scale = OUTPUT_SCALE
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d) and module is not self.whiten:
                # Identity on the first input channels: the block starts close to a pass-through,
                # which lets the very first high-lr steps train every layer at once.
                w = module.weight.data
                n = min(w.shape[0], w.shape[1])
                nn.init.dirac_(w[:n])
        # Until init_from_data runs, an identity-like stem (for a model used without data).
        nn.init.kaiming_normal_(self.whiten.weight)
        nn.init.zeros_(self.whiten.bias)

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor) -> None:
        """Set the whitening filters from normalised training images ``[N, C, H, W]``."""
        k = WHITEN_KERNEL
        images = images.to(self.whiten.weight.device, torch.float32)
        patches = images.unfold(2, k, 1).unfold(3, k, 1)  # N, C, H', W', k, k
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, images.shape[1] * k * k)
        patches = patches - patches.mean(dim=0)
        cov = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov.double())
        filters = eigenvectors.T / torch.sqrt(eigenvalues.clamp(min=0) + WHITEN_EPS)[:, None]
        # largest eigenvalue first; each row is laid out (C, kh, kw) like a conv filter
        filters = filters.flip(0).float().view(-1, images.shape[1], k, k)
        self.whiten.weight.copy_(torch.cat([filters, -filters]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.whiten(x))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.pool(x), 1)
        return self.head(x) * self.output_scale


@MODELS.register("fastnet", **_META)
def fastnet(num_classes: int, in_channels: int = 3) -> nn.Module:
    """airbench94's network (widths 64, 256, 256; 1.97M parameters): 94% on CIFAR-10 in ~10
    epochs with configs/fast.yaml's recipe."""
    return FastNet(num_classes, in_channels, widths=(64, 256, 256))


@MODELS.register("fastnet_s", **_META)
def fastnet_s(num_classes: int, in_channels: int = 3) -> nn.Module:
    """fastnet at half width (32, 128, 128; 0.5M parameters, ~1/4 of the FLOPs)."""
    return FastNet(num_classes, in_channels, widths=(32, 128, 128))
