"""CIFAR-native residual networks: He et al.'s 6n+2-layer ResNets and a Wide ResNet.

torchvision's resnets are ImageNet networks (7x7 stride-2 stem, max-pool, 64..512 channels); on
32x32 images they throw away most of the resolution in the stem. These are the networks the papers
trained on CIFAR itself:

* ``resnet20`` / ``resnet56``: He, Zhang, Ren, Sun, "Deep Residual Learning for Image
  Recognition", CVPR 2016, Section 4.2: a 3x3 conv, then three stages of n basic blocks on
  32x32 / 16x16 / 8x8 maps with 16 / 32 / 64 filters, global average pooling and a linear
  classifier (6n + 2 weighted layers). Shortcuts are the paper's option A: identity, subsampled
  with stride 2 and zero-padded to the wider stage where the shape changes (no parameters).
* ``wrn16_8``: Zagoruyko and Komodakis, "Wide Residual Networks", BMVC 2016: WRN-d-k with
  pre-activation (BN-ReLU-conv) basic blocks, widths 16, 16k, 32k, 64k and a 1x1 conv shortcut
  where the shape changes.

All end in a global average pool (``avgpool``) and a ``fc`` classifier, so any input size works
(``fixed_size`` False; below 8 pixels the last stage sees 1x1 maps); 32 is the size they were
designed for. Each declares
its ``freeze_stages`` (the stem, then one stage per resolution) for ``model.freeze``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# Registered after the seed CNNs, so that `imgcls models` lists those first whatever the import
# order in imgcls.models.
from imgcls.models import seed_cnns  # noqa: F401
from imgcls.registry import MODELS

_CIFAR_META = {"input_size": 32, "default_normalize": "dataset", "fixed_size": False}


def _init_weights(model: nn.Module) -> None:
    """He init (normal, fan_out) for the convolutions, BatchNorm weight 1 and bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- He et al. 2016


class ShortcutA(nn.Module):
    """Option A shortcut: the identity, subsampled with stride ``stride`` and zero-padded from
    ``in_channels`` to ``out_channels`` (the new channels are zeros). It has no parameters."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.extra = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            # Positions 0, s, 2s...: the centres a stride-s 3x3 conv with padding 1 sees, so
            # the map size is ceil(H / s) on both paths, for odd sizes too.
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra))  # zero channels appended
        return x


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers, the shortcut added before the second ReLU (post-activation)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = ShortcutA(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al. 2016 (Section 4.2) CIFAR ResNet with 6n + 2 layers and option A shortcuts.

    conv3x3(16) - BN - ReLU, three stages of ``n`` basic blocks with 16, 32 and 64 filters (the
    second and third start with stride 2), global average pooling, a ``num_classes`` Linear.
    CIFAR-10 test error in the paper (Table 6; 4-pixel padding crop and horizontal flip):
    ResNet-20 8.75% (0.27M parameters), ResNet-32 7.51%, ResNet-44 7.17%, ResNet-56 6.97%
    (0.85M), ResNet-110 6.43%.
    """

    # model.freeze=N: the stem, then the three stages; fc is the head.
    freeze_stages = (("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",))

    def __init__(self, n: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.depth = 6 * n + 2
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, n, stride=1)
        self.layer2 = self._stage(16, 32, n, stride=2)
        self.layer3 = self._stage(32, 64, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        _init_weights(self)

    @staticmethod
    def _stage(in_channels: int, out_channels: int, n: int, stride: int) -> nn.Sequential:
        blocks = [BasicBlock(in_channels, out_channels, stride)]
        blocks += [BasicBlock(out_channels, out_channels) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


# --------------------------------------------------------------------------- Zagoruyko & Komodakis


class WideBasicBlock(nn.Module):
    """Pre-activation basic block B(3,3): BN-ReLU-conv3x3, (dropout), BN-ReLU-conv3x3; a 1x1 conv
    shortcut on the activated input where the shape changes, else the identity on the raw input.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.shortcut: nn.Conv2d | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        out = self.conv2(self.dropout(F.relu(self.bn2(self.conv1(act)))))
        return out + (x if self.shortcut is None else self.shortcut(act))


class WideResNet(nn.Module):
    """Zagoruyko & Komodakis 2016 Wide ResNet WRN-``depth``-``widen``.

    conv3x3(16), three groups of (depth - 4) / 6 pre-activation blocks with 16k, 32k and 64k
    filters (the second and third start with stride 2), BN-ReLU, global average pooling, a
    ``num_classes`` Linear. The paper's CIFAR-10 test error for WRN-16-8 (11.0M parameters), with
    standard crop + flip augmentation and no dropout: 4.81%. ``dropout`` (the paper tried 0.3)
    goes between each block's two convolutions; it is 0 here, as in that result.
    """

    # model.freeze=N: the stem conv, then the three groups (the final BN belongs to the third).
    freeze_stages = (("conv1",), ("layer1",), ("layer2",), ("layer3", "bn"))

    def __init__(
        self,
        depth: int = 16,
        widen: int = 8,
        num_classes: int = 10,
        in_channels: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.layer1 = self._group(widths[0], widths[1], n, 1, dropout)
        self.layer2 = self._group(widths[1], widths[2], n, 2, dropout)
        self.layer3 = self._group(widths[2], widths[3], n, 2, dropout)
        self.bn = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        _init_weights(self)

    @staticmethod
    def _group(
        in_channels: int, out_channels: int, n: int, stride: int, dropout: float
    ) -> nn.Sequential:
        blocks = [WideBasicBlock(in_channels, out_channels, stride, dropout)]
        blocks += [WideBasicBlock(out_channels, out_channels, 1, dropout) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = torch.flatten(self.avgpool(self.relu(self.bn(x))), 1)
        return self.fc(x)


# --------------------------------------------------------------------------- registry


@MODELS.register("resnet20", **_CIFAR_META)
def resnet20(num_classes: int, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-20 (He et al. 2016, option A): 269,722 parameters for 10 classes (0.27M)."""
    return CifarResNet(3, num_classes, in_channels)


@MODELS.register("resnet56", **_CIFAR_META)
def resnet56(num_classes: int, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-56 (He et al. 2016, option A): 853,018 parameters for 10 classes (0.85M)."""
    return CifarResNet(9, num_classes, in_channels)


@MODELS.register("wrn16_8", **_CIFAR_META)
def wrn16_8(num_classes: int, in_channels: int = 3) -> nn.Module:
    """Wide ResNet WRN-16-8 (Zagoruyko & Komodakis 2016): 10,963,370 parameters (11.0M)."""
    return WideResNet(16, 8, num_classes, in_channels)
