"""The ops of torchvision's auto-augment policies on uint8 ``[K, C, H, W]`` batches, each image
with its own magnitude (a float64 ``[K]`` tensor holding exactly the ``magnitude`` float that
torchvision's ``_apply_image_or_video_transform`` receives).

:mod:`imgcls.data.batch_policies` draws the policies and calls these kernels once per op kind
on the images that drew it. The colour and pixel ops give torchvision v2's bytes: they repeat
its float32 arithmetic step for step, including the fused multiply-add of ATen's ``add(...,
alpha=)`` (:func:`_fma`), since a blend a hair below an integer truncates to the level below.
The five geometric ops share one batched ``grid_sample`` built like torchvision's ``affine`` /
``rotate`` (same inverse matrix, centre and grid normalisation, nearest, zero fill).
"""

from __future__ import annotations

import torch
import torch.nn.functional as nnf

# Per-image geometric op kinds of :func:`geometric` (the order of batch_policies.OP_NAMES).
SHEAR_X, SHEAR_Y, TRANSLATE_X, TRANSLATE_Y, ROTATE = range(5)


def _f32(values: torch.Tensor) -> torch.Tensor:
    """Per-image float64 factors as float32 ``[K, 1, 1, 1]``: what a Python float becomes inside
    a float32 ATen kernel."""
    return values.to(torch.float32).view(-1, 1, 1, 1)


def _fma(base: torch.Tensor, other: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``base + other * alpha`` (float32) rounded once, as ATen's vectorised CPU kernel computes
    torchvision's ``base.add_(other, alpha=a)`` with a per-image ``alpha``. ``addcmul`` is
    compiled to the same fused multiply-add on this CPU build (the byte-exactness tests check
    it; other builds and devices are expected to agree but untested). ``base + other * alpha``
    would round twice and put e.g. a gray pixel's saturation blend one level low."""
    return torch.addcmul(base, other, alpha)


def put_images(out: torch.Tensor, idx: torch.Tensor, values: torch.Tensor) -> None:
    """``out[idx] = values`` for a contiguous ``out``, moving whole images as int64 words where
    their size allows (a uint8 index copy goes byte by byte)."""
    rows = out.view(len(out), -1)
    if rows.shape[1] % 8 == 0:
        values = values.reshape(len(idx), -1)
        rows.view(torch.int64).index_copy_(0, idx, values.view(torch.int64))
    else:
        out.index_copy_(0, idx, values)


def _blend(images: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_blend(image, other, ratio)`` per image: ``image * ratio + other *
    (1 - ratio)``, clamped to [0, 255] and truncated to uint8."""
    scaled = images.mul(_f32(ratio))  # uint8 * float32: float32
    return _fma(scaled, other, _f32(1.0 - ratio)).clamp_(0, 255).to(torch.uint8)


def _gray(images: torch.Tensor) -> torch.Tensor:
    """The float32 ``[K, 1, H, W]`` luma that ``adjust_saturation`` / ``adjust_contrast`` blend
    towards (ITU-R 601 weights, floored for uint8 input; a 1-channel image is its own)."""
    if images.shape[1] == 1:
        return images.float()
    r, g, b = images.unbind(dim=1)
    luma = r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114)
    return luma.unsqueeze(1).floor_()


def brightness(images: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """``adjust_brightness(image, 1 + magnitude)``."""
    return images.mul(_f32(1.0 + magnitude)).clamp_(0, 255).to(torch.uint8)


def color(images: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """``adjust_saturation(image, 1 + magnitude)`` (a 1-channel image is returned as is)."""
    if images.shape[1] == 1:
        return images.clone()
    return _blend(images, _gray(images), 1.0 + magnitude)


def contrast(images: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """``adjust_contrast(image, 1 + magnitude)``: blend towards the image's mean luma."""
    mean = _gray(images).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(images, mean, 1.0 + magnitude)


def sharpness(images: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """``adjust_sharpness(image, 1 + magnitude)``: blend the interior (not the one-pixel border)
    with the rounded 3x3 smoothing (weights 1, centre 5, over 13). torchvision rounds a float
    convolution; the exact integer sum rounds the same, since ``sum / 13`` is never within
    float error of a half."""
    if images.shape[-2] <= 2 or images.shape[-1] <= 2:
        return images.clone()
    x = images.to(torch.int16)
    rows = x[..., :-2, :] + x[..., 1:-1, :] + x[..., 2:, :]
    centre = x[..., 1:-1, 1:-1]
    total = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:] + 4 * centre
    blurred = total.float().mul_(1.0 / 13.0).round_()
    inner = centre.float()
    inner = _fma(inner, blurred.sub_(inner), _f32(1.0 - (1.0 + magnitude)))
    out = images.clone()
    out[..., 1:-1, 1:-1] = inner.clamp_(0, 255).to(torch.uint8)
    return out


def posterize(images: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """``posterize(image, int(magnitude))``: keep each image's top ``bits`` bits."""
    bits = magnitude.to(torch.int64).clamp(0, 8)
    mask = (255 << (8 - bits)) & 255
    return images & mask.to(torch.uint8).view(-1, 1, 1, 1)


def solarize(images: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """``solarize(image, 255 * magnitude)``: invert the pixels at or above the threshold, which
    torch compares in float32 (uint8 tensor vs float); for integers that is ``pixel >=
    ceil(threshold)``. Policies' thresholds lie in [0, 255] (torchvision rejects higher)."""
    threshold = torch.ceil(_f32(255.0 * magnitude)).clamp_(0, 255).to(torch.uint8)
    return images ^ (images >= threshold).to(torch.uint8).mul_(255)  # x ^ 255 inverts


def autocontrast(images: torch.Tensor, magnitude: torch.Tensor | None = None) -> torch.Tensor:
    """``autocontrast(image)``: stretch each channel to [0, 255] (a flat channel is kept)."""
    values = images.float()
    low = values.amin(dim=(-2, -1), keepdim=True)
    high = values.amax(dim=(-2, -1), keepdim=True)
    flat = high == low
    inv_scale = torch.where(flat, 1.0, (high - low).mul_(1.0 / 255))
    low = torch.where(flat, 0.0, low)
    return values.sub_(low).div_(inv_scale).clamp_(0, 255).to(torch.uint8)


def equalize(images: torch.Tensor, magnitude: torch.Tensor | None = None) -> torch.Tensor:
    """``equalize(image)``: PIL's histogram equalisation per image and channel, from one batched
    histogram (``scatter_add_``); a channel whose non-peak pixels are under 255 is kept."""
    flat = images.flatten(start_dim=2).long()  # [K, C, H * W]
    hist = flat.new_zeros(flat.shape[:2] + (256,), dtype=torch.int32)
    hist.scatter_add_(2, flat, hist.new_ones(1).expand_as(flat))
    cum_hist = hist.cumsum(dim=2)
    peak = cum_hist.argmax(dim=2, keepdim=True)  # the last non-empty bin
    step = (flat.shape[2] - hist.gather(2, peak)).div(255, rounding_mode="floor")
    lut = (cum_hist[..., :-1] + step // 2).div_(step.clamp(min=1), rounding_mode="floor")
    lut = torch.cat([lut.new_zeros(lut.shape[:2] + (1,)), lut.clamp_(0, 255)], dim=2)
    out = lut.to(torch.uint8).gather(2, flat).view_as(images)
    return torch.where(step.unsqueeze(-1) != 0, out, images)


def invert(images: torch.Tensor, magnitude: torch.Tensor | None = None) -> torch.Tensor:
    """``invert(image)``."""
    return images.bitwise_not()


# --------------------------------------------------------------------------- geometric ops


def _inverse_affine(kind: torch.Tensor, magnitude: torch.Tensor, height: int,
                    width: int) -> torch.Tensor:
    """float32 ``[K, 2, 3]`` output-to-input matrices: torchvision's ``_get_inverse_affine_matrix``
    for each image's op, in float64 with its formulas. Shears turn about the top-left corner
    (``center=[0, 0]``), rotations and translations about the image centre; translations are
    ``int(magnitude)`` pixels; ``rotate(angle)`` is ``affine(-angle)``."""
    zero = torch.zeros_like(magnitude)
    is_shear = (kind == SHEAR_X) | (kind == SHEAR_Y)
    shear = torch.deg2rad(torch.rad2deg(torch.atan(magnitude)))  # degrees, as affine gets them
    sx = torch.where(kind == SHEAR_X, shear, zero)
    sy = torch.where(kind == SHEAR_Y, shear, zero)
    rot = torch.deg2rad(torch.where(kind == ROTATE, -torch.remainder(magnitude, 360.0), zero))
    cx = torch.where(is_shear, -0.5 * width, zero)
    cy = torch.where(is_shear, -0.5 * height, zero)
    cx_plus_tx = cx + torch.where(kind == TRANSLATE_X, torch.trunc(magnitude), zero)
    cy_plus_ty = cy + torch.where(kind == TRANSLATE_Y, torch.trunc(magnitude), zero)
    cos_sy, tan_sx = torch.cos(sy), torch.tan(sx)
    a = torch.cos(rot - sy) / cos_sy
    b = -(a * tan_sx + torch.sin(rot))
    c = torch.sin(rot - sy) / cos_sy
    d = torch.cos(rot) - c * tan_sx
    m0, m1, m3, m4 = d, -b, -c, a  # [[a, b], [c, d]] has determinant 1
    m2 = cx - m0 * cx_plus_tx - m1 * cy_plus_ty
    m5 = cy - m3 * cx_plus_tx - m4 * cy_plus_ty
    return torch.stack([m0, m1, m2, m3, m4, m5], dim=1).view(-1, 2, 3).to(torch.float32)


def _affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[K, H, W, 2]`` sampling grid, as torchvision's ``_affine_grid`` builds it per image
    (pixel-centred base grid times the matrix, normalised by half the size afterwards)."""
    base = torch.empty(1, height, width, 3, device=theta.device)
    base[..., 0].copy_(torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, width,
                                      device=theta.device))
    base[..., 1].copy_(torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, height,
                                      device=theta.device).unsqueeze_(-1))
    base[..., 2].fill_(1)
    half = torch.tensor([0.5 * width, 0.5 * height], device=theta.device)
    rescaled = theta.transpose(1, 2).div(half)  # [K, 3, 2]
    grid = base.view(1, height * width, 3).expand(len(theta), -1, -1).bmm(rescaled)
    return grid.view(-1, height, width, 2)


def geometric(images: torch.Tensor, kind: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """ShearX/ShearY/TranslateX/TranslateY/Rotate (``kind``, per image) in one nearest-neighbour
    resample with zero fill. Rotations by a multiple of 90 degrees take torchvision's
    ``rot90`` shortcuts (0 and 180 always, 90 and 270 on square images)."""
    height, width = images.shape[-2:]
    out = images.clone()
    quarters = torch.full_like(kind, -1)
    if (kind == ROTATE).any():
        angle = torch.remainder(magnitude, 360.0)
        turns = torch.tensor([0, 180] + ([90, 270] if height == width else []),
                             dtype=angle.dtype, device=angle.device)
        shortcut = (kind == ROTATE) & (angle.unsqueeze(1) == turns).any(dim=1)
        quarters = torch.where(shortcut, (angle / 90).round().long(), quarters)
        for k in quarters[shortcut].unique().tolist():
            idx = (quarters == k).nonzero().squeeze(1)
            put_images(out, idx, torch.rot90(images.index_select(0, idx), k, dims=(-2, -1)))
    idx = (quarters < 0).nonzero().squeeze(1)
    if len(idx):
        theta = _inverse_affine(kind[idx], magnitude[idx], height, width)
        grid = _affine_grid(theta, height, width)
        warped = nnf.grid_sample(images.index_select(0, idx).float(), grid, mode="nearest",
                                 padding_mode="zeros", align_corners=False)
        put_images(out, idx, warped.round_().to(torch.uint8))
    return out
