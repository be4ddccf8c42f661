"""Photo augmentations on whole batches: torchvision's ``RandomResizedCrop`` (per-image boxes, one
batched resample), ``ColorJitter`` and ``RandomGrayscale``, with per-image random parameters.

:class:`~imgcls.data.photo_loader.PhotoLoader` draws an epoch's parameters with the ``draw_*``
functions (one seeded generator, vectorised over the epoch's images) and applies them per batch.
The draws follow torchvision's ``get_params`` exactly (ten tries of scale and log-ratio, then
the clamped central crop; the colour factors and a per-image order of the four colour ops), so
the distributions match; the resample is ``roi_align`` over the crops (bilinear, averaging
``ceil(crop / output)`` samples per output pixel when shrinking, as antialiasing does).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torchvision.ops import roi_align

# RandomResizedCrop's defaults
SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
TRIES = 10
GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def draw_resized_crops(heights: torch.Tensor, widths: torch.Tensor, generator: torch.Generator,
                       scale: Sequence[float] = SCALE,
                       ratio: Sequence[float] = RATIO) -> torch.Tensor:
    """``[N, 4]`` int64 boxes ``(top, left, height, width)``: for image ``k`` of ``heights[k]``
    x ``widths[k]`` pixels, the crop ``RandomResizedCrop.get_params`` draws (the first of ten
    tries whose box fits, else the central crop clamped to ``ratio``). CPU tensors."""
    n = len(heights)
    h_img, w_img = heights.double()[:, None], widths.double()[:, None]
    area = h_img * w_img
    u_scale = torch.rand(n, TRIES, generator=generator, dtype=torch.float64)
    u_ratio = torch.rand(n, TRIES, generator=generator, dtype=torch.float64)
    target = area * (scale[0] + (scale[1] - scale[0]) * u_scale)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u_ratio)
    # int(round(x)) in Python rounds half to even, as torch.round does
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= w_img) & (h > 0) & (h <= h_img)
    first = fits.double().argmax(dim=1, keepdim=True)  # the first try that fits
    found = fits.any(dim=1)
    h = h.gather(1, first).squeeze(1)
    w = w.gather(1, first).squeeze(1)
    h_img, w_img = h_img.squeeze(1), w_img.squeeze(1)
    u_top = torch.rand(n, generator=generator, dtype=torch.float64)
    u_left = torch.rand(n, generator=generator, dtype=torch.float64)
    top = torch.floor(u_top * (h_img - h + 1))
    left = torch.floor(u_left * (w_img - w + 1))
    # the fallback: the whole image, cut to the nearest allowed aspect ratio, centred
    in_ratio = w_img / h_img
    fh = torch.where(in_ratio < min(ratio), torch.round(w_img / min(ratio)), h_img)
    fw = torch.where(in_ratio > max(ratio), torch.round(h_img * max(ratio)), w_img)
    h, w = torch.where(found, h, fh), torch.where(found, w, fw)
    top = torch.where(found, top, torch.div(h_img - h, 2, rounding_mode="floor"))
    left = torch.where(found, left, torch.div(w_img - w, 2, rounding_mode="floor"))
    return torch.stack([top, left, h, w], dim=1).long()


def resample_crops(crops: Sequence[np.ndarray], size: tuple[int, int],
                   device: torch.device) -> torch.Tensor:
    """The uint8 HWC ``crops`` (any sizes) resized to ``size`` (H, W) as one float32
    ``[N, C, H, W]`` batch in [0, 255] on ``device``: bilinear (pixel centres as
    ``F.interpolate(align_corners=False)``), with ``ceil(crop / output)`` samples averaged per
    output pixel where the crop is larger, one ``roi_align`` for the whole batch."""
    n, channels = len(crops), crops[0].shape[2]
    rows = max(c.shape[0] for c in crops)
    cols = max(c.shape[1] for c in crops)
    # one spare row and column, repeating each crop's last ones: the bilinear samples near the
    # far edges clamp to the edge pixel, never reading zeros or a neighbour's pixels
    canvas = np.zeros((n, rows + 1, cols + 1, channels), dtype=np.uint8)
    boxes = torch.zeros(n, 5, dtype=torch.float32)
    for k, crop in enumerate(crops):
        h, w = crop.shape[:2]
        canvas[k, :h, :w] = crop
        canvas[k, h, :w] = crop[h - 1]
        canvas[k, : h + 1, w] = canvas[k, : h + 1, w - 1]
        boxes[k] = torch.tensor([k, 0.0, 0.0, w, h])
    images = torch.from_numpy(canvas).to(device, non_blocking=True)
    images = images.permute(0, 3, 1, 2).float()
    return roi_align(images, boxes.to(device), output_size=size, spatial_scale=1.0,
                     sampling_ratio=-1, aligned=True)


def center_box(height: int, width: int, size: tuple[int, int]) -> tuple[int, int]:
    """(top, left) of ``CenterCrop(size)`` in a ``height`` x ``width`` image."""
    return int(round((height - size[0]) / 2.0)), int(round((width - size[1]) / 2.0))


# --------------------------------------------------------------------------- colour


def draw_color_jitter(n: int, jitter: Sequence[float], generator: torch.Generator,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """``ColorJitter(brightness, contrast, saturation, hue)``'s parameters for ``n`` images:
    ``[N, 4]`` factors (brightness, contrast and saturation uniform in ``[max(0, 1 - v), 1 +
    v]``, hue in ``[-v, v]``) and ``[N, 4]`` the order the four ops run in (a random permutation
    per image, as ``ColorJitter`` draws one per call)."""
    factors = torch.rand(n, 4, generator=generator)
    lows = torch.tensor([max(0.0, 1 - v) for v in jitter[:3]] + [-jitter[3]])
    highs = torch.tensor([1 + v for v in jitter[:3]] + [jitter[3]])
    order = torch.rand(n, 4, generator=generator).argsort(dim=1)
    return lows + (highs - lows) * factors, order


def gray(images: torch.Tensor) -> torch.Tensor:
    """``[N, 1, H, W]`` luminance of RGB ``[N, 3, H, W]`` images (torchvision's weights)."""
    r, g, b = images.unbind(1)
    return (GRAY[0] * r + GRAY[1] * g + GRAY[2] * b).unsqueeze(1)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (images * f + other * (1 - f)).clamp_(0, 255)


def _brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, torch.zeros_like(x), f)


def _contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, gray(x).mean(dim=(1, 2, 3), keepdim=True), f)


def _saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, gray(x), f)


def _hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by ``f`` turns, through HSV as torchvision's ``adjust_hue`` does."""
    rgb = x / 255.0
    value, _ = rgb.max(dim=1)
    low, _ = rgb.min(dim=1)
    chroma = value - low
    saturation = torch.where(value > 0, chroma / value.clamp(min=1e-12), 0.0)
    safe = torch.where(chroma > 0, chroma, 1.0)
    r, g, b = ((value.unsqueeze(1) - rgb) / safe.unsqueeze(1)).unbind(1)
    is_r, is_g = value == rgb[:, 0], value == rgb[:, 1]
    hue = torch.where(is_r, b - g, torch.where(is_g, 2.0 + r - b, 4.0 + g - r))
    hue = torch.where(chroma > 0, hue / 6.0, 0.0)
    hue = torch.remainder(hue + f.view(-1, 1, 1), 1.0)
    # back to RGB: each channel is value - chroma * clamp(min(k, 4 - k), 0, 1), k = (n + 6h) % 6
    chroma = saturation * value
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device).view(1, 3, 1, 1)
    k = torch.remainder(n + 6.0 * hue.unsqueeze(1), 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0, 1)
    return (value.unsqueeze(1) - chroma.unsqueeze(1) * ramp).mul_(255.0)


COLOR_OPS: tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], ...] = (
    _brightness, _contrast, _saturation, _hue)


def apply_color_jitter(images: torch.Tensor, jitter: Sequence[float], factors: torch.Tensor,
                       order: torch.Tensor) -> torch.Tensor:
    """Float RGB ``[N, 3, H, W]`` images in [0, 255], jittered in place by the drawn
    ``factors`` in each image's ``order``; an op whose ``jitter`` entry is 0 is skipped, as
    ``ColorJitter`` skips it."""
    for position in range(4):
        for op, fn in enumerate(COLOR_OPS):
            if jitter[op] == 0:
                continue
            picked = (order[:, position] == op).nonzero().squeeze(1).to(images.device)
            if len(picked):
                f = factors[:, op].to(images.device)[picked]
                images[picked] = fn(images[picked], f)
    return images


def apply_grayscale(images: torch.Tensor, picked: torch.Tensor) -> torch.Tensor:
    """``RandomGrayscale``: the images where the bool vector ``picked`` is true, as their
    luminance in all three channels (in place)."""
    index = picked.nonzero().squeeze(1).to(images.device)
    if len(index):
        images[index] = gray(images[index]).expand(-1, images.shape[1], -1, -1)
    return images
