"""MixUp and CutMix: whole training batches mixed together with their labels.

They act on the batch the training loop is about to train on, after either loader made it, so
both loaders (and every process of a distributed run) get them the same way. torchvision's v2
``MixUp``/``CutMix`` do the mixing; they pair each image with its neighbour in the (shuffled)
batch and draw from torch's global generator, whose state every checkpoint saves, so a resumed
run draws what the uninterrupted one would have.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import v2

from imgcls.config import TransformConfig

# (images, class indices) -> (mixed images, [N, classes] label probabilities)
LabelMixing = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def label_mixing(cfg: TransformConfig, num_classes: int) -> LabelMixing | None:
    """``transforms.mixup`` / ``transforms.cutmix`` as one callable (None: both off); with both,
    each batch gets one of the two, chosen at random with equal odds (timm's default switch).

    >>> mix = label_mixing(TransformConfig(mixup=0.2), num_classes=3)
    >>> images, targets = mix(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]))
    >>> targets.shape, bool(torch.allclose(targets.sum(dim=1), torch.ones(4)))
    (torch.Size([4, 3]), True)
    """
    mixers: list[torch.nn.Module] = []
    if cfg.mixup > 0:
        mixers.append(v2.MixUp(alpha=cfg.mixup, num_classes=num_classes))
    if cfg.cutmix > 0:
        mixers.append(v2.CutMix(alpha=cfg.cutmix, num_classes=num_classes))
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)
