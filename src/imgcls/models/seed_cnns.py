"""The three small CIFAR-sized CNNs the project started from, layer for layer.

Their layers and attribute names are kept exactly as in the original scripts so that state_dicts
saved by those scripts load unchanged (``model.pretrained=PATH``) and parameter counts match.
All three take 32x32 inputs: the flatten sizes (16*5*5, 64*4*4, 128*4*4) are fixed.
"""

from __future__ import annotations

import torch
from torch import nn

from imgcls.registry import MODELS

_SEED_META = {"input_size": 32, "default_normalize": "dataset", "fixed_size": True}
# The original scripts trained on CIFAR-10: model.head=append keeps that 10-way layer (and its
# weights from model.pretrained) and adds Linear(10, num_classes) after it.
ORIGINAL_CLASSES = 10


class LeNet(nn.Module):
    """The PyTorch "Training a classifier" tutorial's ``Net`` (LeNet-5 style)."""

    # model.freeze=N: two conv blocks, then the fully connected layers (fc3 is the head). Listed
    # because the one max-pool module serves both conv blocks (see models/finetune.py).
    freeze_stages = (("conv1",), ("conv2",), ("fc1", "fc2", "fc3"))

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)  # shared by both conv stages, as in the tutorial
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class CIFAR10Network(nn.Module):
    """The original ``CIFAR10_Network``: three 5x5 conv + max-pool stages, two linear layers.

    It has no activation functions at all (so it is a linear model followed by max-pools); that
    is how the original was written, and it is kept exact so its checkpoints and results carry
    over. Use ``simple_v3`` for a network with non-linearities.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5, padding=2),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 5, padding=2),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 64),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _conv_relu_bn(cin: int, cout: int) -> list[nn.Module]:
    # The original puts BatchNorm *after* the ReLU; kept so the Sequential indices match.
    return [nn.Conv2d(cin, cout, 3, 1, 1), nn.ReLU(inplace=True), nn.BatchNorm2d(cout)]


class CIFAR10NetSimpleV3(nn.Module):
    """The original ``CIFAR10_Net_Simple_v3``: three VGG-style double-conv blocks, BN, dropout."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.model = nn.Sequential(
            *_conv_relu_bn(in_channels, 32),
            *_conv_relu_bn(32, 32),
            nn.MaxPool2d(2),
            *_conv_relu_bn(32, 64),
            *_conv_relu_bn(64, 64),
            nn.MaxPool2d(2),
            *_conv_relu_bn(64, 128),
            *_conv_relu_bn(128, 128),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Dropout(0.4),
            nn.Linear(128 * 4 * 4, 64),
            nn.ReLU(inplace=True),
            nn.Dropout(0.4),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@MODELS.register("lenet", **_SEED_META)
def lenet(num_classes: int, in_channels: int = 3) -> nn.Module:
    """LeNet from the PyTorch tutorial (62k parameters for 3x32x32 and 10 classes)."""
    return LeNet(num_classes, in_channels)


@MODELS.register("cifar10_net", **_SEED_META)
def cifar10_net(num_classes: int, in_channels: int = 3) -> nn.Module:
    """The original activation-free CIFAR10_Network (146k parameters)."""
    return CIFAR10Network(num_classes, in_channels)


@MODELS.register("simple_v3", **_SEED_META)
def simple_v3(num_classes: int, in_channels: int = 3) -> nn.Module:
    """CIFAR10_Net_Simple_v3: 6 conv layers with BatchNorm and dropout (420k parameters)."""
    return CIFAR10NetSimpleV3(num_classes, in_channels)
