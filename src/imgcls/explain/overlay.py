"""The picture of an explanation: the image as the model saw it (after resizing and cropping,
normalisation undone) with the heatmap over it in a colour map, the peak marked."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

MIN_SIDE = 224  # px: a 32 px CIFAR image is enlarged (nearest) so that it can be looked at
ALPHA = 0.45  # the heatmap's weight over the image


def model_view(image: torch.Tensor, mean_std: tuple[list[float], list[float]] | None
               ) -> np.ndarray:
    """``(H, W, 3)`` uint8 of a normalised ``(C, H, W)`` input (greyscale shown as grey)."""
    pixels = image.detach().float().cpu()
    if mean_std is not None:
        mean, std = (torch.tensor(v, dtype=torch.float32)[:, None, None] for v in mean_std)
        pixels = pixels * std + mean
    if pixels.shape[0] == 1:
        pixels = pixels.expand(3, -1, -1)
    return (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def overlay(view: np.ndarray, heatmap: np.ndarray, peak: tuple[int, int],
            colormap: str = "jet") -> Image.Image:
    """``view`` (H, W, 3 uint8) with ``heatmap`` (H, W in [0, 1]) blended over it and a ring
    at ``peak`` (x, y in the view's pixels), enlarged to at least MIN_SIDE px."""
    import matplotlib

    colours = matplotlib.colormaps[colormap](np.clip(heatmap, 0, 1))[..., :3]
    blended = (1 - ALPHA) * view.astype(np.float64) / 255 + ALPHA * colours
    picture = Image.fromarray((blended * 255).round().astype(np.uint8))
    scale = max(1, -(-MIN_SIDE // min(view.shape[:2])))
    if scale > 1:
        picture = picture.resize((view.shape[1] * scale, view.shape[0] * scale), Image.NEAREST)
    x, y = ((peak[0] + 0.5) * scale, (peak[1] + 0.5) * scale)
    radius = max(4, min(picture.size) // 24)
    draw = ImageDraw.Draw(picture)
    draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline="white", width=2)
    return picture
