"""Heatmaps of what a class score rests on, by Captum (PyTorch's own attribution library).

- ``gradcam`` (Selvaraju et al., 2017): Captum's ``LayerGradCam`` on the layer of
  :mod:`imgcls.explain.target_layer`: each feature channel weighted by the mean gradient of the
  class score over the map, summed, ReLU, then resized to the input (bilinear).
- ``integrated_gradients`` (Sundararajan et al., 2017): Captum's ``IntegratedGradients`` from a
  black baseline (the mean colour after normalisation: zeros), the attribution's absolute value
  summed over colour channels: pixel-level, noisier, and needing no layer.

Captum was picked over the ``grad-cam`` package because it is maintained by the PyTorch team,
needs nothing beyond torch and numpy, and offers Grad-CAM and integrated gradients on any
``nn.Module`` through one API; ``grad-cam`` pulls in OpenCV. A layer whose output is not
``(N, C, H, W)`` (Swin's ``(N, H, W, C)`` in timm, ViT's tokens) is shown to Captum through
:class:`MapView`, a module called from a forward hook that presents the output as a map.

Each map is scaled to [0, 1] per image (all zeros stays zeros: nothing supports the class).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from imgcls.errors import ImgclsError
from imgcls.explain.target_layer import TargetLayer

METHODS = ("gradcam", "integrated_gradients")
IG_STEPS = 32  # integrated gradients' Riemann steps: enough for smooth maps at this size


class MapView(nn.Module):
    """The target layer's output as ``(N, C, H, W)``: Captum hooks this module. ``restore``
    puts a map back into the layer's own layout, so the network runs on unchanged values."""

    def __init__(self, target: TargetLayer) -> None:
        super().__init__()
        self.target = target

    def forward(self, out: torch.Tensor) -> torch.Tensor:
        if self.target.layout == "nhwc":
            return out.permute(0, 3, 1, 2)
        h, w = self.target.grid
        patches = out[:, self.target.extra_tokens:]
        return patches.transpose(1, 2).reshape(out.shape[0], out.shape[2], h, w)

    def restore(self, out: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        if self.target.layout == "nhwc":
            return grid.permute(0, 2, 3, 1)
        patches = grid.flatten(2).transpose(1, 2)
        return torch.cat([out[:, :self.target.extra_tokens], patches], dim=1)


@contextmanager
def hooked_layer(model: nn.Module, target: TargetLayer) -> Iterator[nn.Module]:
    """The module Captum should hook for ``target``: the layer itself when its output is a
    ``(N, C, H, W)`` map, else a :class:`MapView` run on its output for the duration."""
    layer = dict(model.named_modules())[target.name]
    if target.layout == "nchw":
        yield layer
        return
    view = MapView(target)
    handle = layer.register_forward_hook(lambda _m, _i, out: view.restore(out, view(out)))
    try:
        yield view
    finally:
        handle.remove()


def heatmaps(model: nn.Module, images: torch.Tensor, classes: torch.Tensor, *,
             method: str = "gradcam", target: TargetLayer | None = None) -> torch.Tensor:
    """``(N, H, W)`` maps in [0, 1] at the images' size, one per image, for the logit of
    ``classes[i]`` (a multi-label model's logit is its class's score too)."""
    try:
        from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam
    except ImportError:
        raise ImgclsError("heatmaps need Captum: pip install 'imgcls[explain]'") from None

    model.eval()
    images = images.detach().float()
    if method == "gradcam":
        if target is None:
            raise ValueError("gradcam needs a target layer")
        with hooked_layer(model, target) as layer:
            maps = LayerGradCam(model, layer).attribute(images, target=classes,
                                                        relu_attributions=True)
        maps = LayerAttribution.interpolate(maps.detach().float(), tuple(images.shape[-2:]),
                                            interpolate_mode="bilinear")[:, 0]
    elif method == "integrated_gradients":
        attributions = IntegratedGradients(model).attribute(
            images, baselines=torch.zeros_like(images), target=classes, n_steps=IG_STEPS,
            internal_batch_size=max(1, len(images)) * 8)
        maps = attributions.detach().abs().sum(dim=1)
        maps = F.avg_pool2d(maps[:, None], 3, stride=1, padding=1, count_include_pad=False)[:, 0]
    else:
        raise ValueError(f"unknown method {method!r}; one of {', '.join(METHODS)}")
    peak = maps.flatten(1).amax(dim=1).clamp(min=1e-12)[:, None, None]
    return torch.where(peak > 1e-12, maps.clamp(min=0) / peak, torch.zeros_like(maps))


def peak_of(heatmap: torch.Tensor) -> tuple[int, int]:
    """``(x, y)`` of the map's highest value (the first, in row-major order, on ties)."""
    index = int(heatmap.flatten().argmax())
    return index % heatmap.shape[-1], index // heatmap.shape[-1]
