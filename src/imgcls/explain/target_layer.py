"""Which layer Grad-CAM weighs: the last one whose output is still a map of the image.

Grad-CAM needs a layer whose output keeps the image's layout (a grid of positions, each with a
vector of features) and that the class score depends on through the rest of the network: for a
CNN the last convolutional block before global pooling. One forward pass with a hook on every
module (on the "meta" device: shapes only, instant even for vit_h_14) lists each module's
output in the order they finish; the chosen layer is the last with a grid of at least 2 x 2:

- ``nchw``: a 4-D output ``(N, C, H, W)`` (CNNs; a container such as resnet's ``layer4``
  finishes after its blocks, so the whole stage is chosen);
- ``nhwc``: ``(N, H, W, C)``, channels last (Swin's stages in timm);
- ``tokens``: ``(N, L, C)`` with ``L = g * g`` patches, or one class token more (ViT). The
  last block's output reaches the logits only through its class token, so for tokens the
  chosen layer is the input normalisation of the last attention block (``ln_1``,
  ``norm1``), whose patch tokens the class token attends to.

Probing uses the model's own input size (square, so that the grid's two sides identify the
layout): at 32 px resnet18's ``layer4`` is 1 x 1 and ``layer3`` (2 x 2) is chosen instead.
``model.cam_layer`` (or ``imgcls explain --layer``) names a module instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from imgcls.errors import ImgclsError

# The pre-attention normalisation of a transformer block, torchvision's and timm's names.
ATTENTION_NORMS = ("ln_1", "norm1")


@dataclass(frozen=True)
class TargetLayer:
    name: str  # the module's dotted name in model.named_modules()
    layout: str  # nchw, nhwc or tokens
    grid: tuple[int, int]  # the map's height and width at the probed input size
    extra_tokens: int = 0  # tokens before the patches (a class token), layout tokens only


def output_layout(shape: tuple[int, ...]) -> tuple[str, tuple[int, int], int] | None:
    """The layout, grid and leading extra tokens of a module's output at a square input; None
    when it is not a map of the image.

    >>> output_layout((1, 512, 7, 7)), output_layout((1, 7, 7, 768))
    (('nchw', (7, 7), 0), ('nhwc', (7, 7), 0))
    >>> output_layout((1, 197, 768)), output_layout((1, 10))
    (('tokens', (14, 14), 1), None)
    """
    if len(shape) == 4 and shape[0] == 1:
        if shape[2] == shape[3]:
            return "nchw", (shape[2], shape[3]), 0
        if shape[1] == shape[2]:
            return "nhwc", (shape[1], shape[2]), 0
        return None
    if len(shape) == 3 and shape[0] == 1:  # not windows of the image batched (MaxViT's)
        for extra in (0, 1):
            side = math.isqrt(shape[1] - extra)
            if side >= 2 and side * side == shape[1] - extra:
                return "tokens", (side, side), extra
    return None


def probe_outputs(model: nn.Module, size: int, in_channels: int = 3
                  ) -> list[tuple[str, tuple[int, ...]]]:
    """Every module's output shape for one ``size`` x ``size`` image, in the order the modules
    finish (a module called twice is listed at its last call), on the model's own device (on
    "meta": shapes only, no arithmetic)."""
    finished: dict[str, tuple[int, ...]] = {}
    hooks = []
    for name, module in model.named_modules():
        if not name:
            continue

        def record(_m: nn.Module, _i: object, out: object, name: str = name) -> None:
            if isinstance(out, torch.Tensor):
                finished.pop(name, None)  # re-insert: dicts keep insertion order
                finished[name] = tuple(out.shape)

        hooks.append(module.register_forward_hook(record))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_channels, size, size, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return list(finished.items())


def choose_target_layer(model: nn.Module, size: int, in_channels: int = 3,
                        name: str = "") -> TargetLayer:
    """The layer Grad-CAM weighs for ``size`` px input (module docstring), or the module
    ``name`` when given. An ImgclsError names the reason when there is none."""
    was_training = model.training
    model.eval()
    try:
        outputs = probe_outputs(model, size, in_channels)
    finally:
        model.train(was_training)
    maps = [(n, layout) for n, shape in outputs if (layout := output_layout(shape)) is not None]
    if name:
        modules = dict(model.named_modules())
        if name not in modules:
            raise ImgclsError(f"model.cam_layer={name}: the model has no module of that name "
                              f"(e.g. {', '.join(n for n, _ in maps[-3:]) or 'none'})")
        found = dict(maps).get(name)
        if found is None:
            shape = dict(outputs).get(name)
            raise ImgclsError(f"model.cam_layer={name}: its output {shape} is not a map of the "
                              "image (N, C, H, W), (N, H, W, C) or (N, tokens, C)")
        return TargetLayer(name, found[0], found[1], found[2])
    spatial = [(n, lay) for n, lay in maps if min(lay[1]) >= 2]
    if spatial and spatial[-1][1][0] == "tokens":  # a ViT: the last block's attention input
        norms = [(n, lay) for n, lay in spatial
                 if lay[0] == "tokens" and n.rsplit(".", 1)[-1] in ATTENTION_NORMS]
        spatial = norms or spatial
    if not spatial:
        raise ImgclsError(f"no layer of this model keeps a map of a {size} px image (at least "
                          "2 x 2) for Grad-CAM; name one with model.cam_layer=NAME")
    n, (layout, grid, extra) = spatial[-1]
    return TargetLayer(n, layout, grid, extra)
