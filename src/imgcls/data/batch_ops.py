"""Augmentations of whole ``[N, C, H, W]`` batches: padding, random crop, horizontal flip, cutout.

The one implementation of these ops: :class:`~imgcls.data.memory.MemoryLoader` draws an epoch's
parameters with the ``draw_*`` functions and applies them with :func:`window_crop_flip` (the
CPU's way) or :func:`gather_crop_flip` (elsewhere) and :func:`apply_cutout`; the ``batch_*``
functions are the same ops, drawn and applied in one call. The semantics are torchvision's
``RandomCrop(padding, padding_mode)``, ``RandomHorizontalFlip`` and
:class:`imgcls.data.transforms.Cutout`, per image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

# transforms.crop_padding_mode (torchvision's padding_mode names) -> torch.nn.functional.pad's
PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}

Padding = tuple[int, int, int, int]  # (left, top, right, bottom)
# Crops (and flips) the images ``idx`` of the source, which are entries ``start:stop`` of the
# draws: uint8 [stop - start, C, H, W].
Cropper = Callable[[torch.Tensor, int, int], torch.Tensor]


def padding_ltrb(padding: int | Sequence[int]) -> Padding:
    """``transforms.crop_padding`` (1, 2 or 4 ints) as torchvision's (left, top, right, bottom).

    >>> padding_ltrb([4]), padding_ltrb([1, 2]), padding_ltrb([0, 2, 3, 4])
    ((4, 4, 4, 4), (1, 2, 1, 2), (0, 2, 3, 4))
    """
    values = [int(padding)] if isinstance(padding, int) else [int(p) for p in padding]
    if len(values) == 1:
        return (values[0],) * 4  # type: ignore[return-value]
    if len(values) == 2:
        return values[0], values[1], values[0], values[1]
    if len(values) == 4:
        return values[0], values[1], values[2], values[3]
    raise ValueError(f"padding must be 1, 2 or 4 ints, got {values}")


def pad_images(images: torch.Tensor, padding: Padding, mode: str = "constant") -> torch.Tensor:
    """Pad ``[N, C, H, W]`` images by ``(left, top, right, bottom)`` the way torchvision's
    ``RandomCrop(padding_mode=mode)`` pads one image: ``constant`` (zeros), ``reflect`` (mirror
    without repeating the edge pixel; each pad must be smaller than the image) or ``edge``.

    >>> pad_images(torch.tensor([[[[1, 2, 3]]]]), (2, 0, 1, 0), "reflect").tolist()
    [[[[3, 2, 1, 2, 3, 2]]]]
    """
    left, top, right, bottom = padding
    return torch.nn.functional.pad(images, (left, right, top, bottom), mode=PAD_MODES[mode])


# --------------------------------------------------------------------------- drawing parameters


def draw_crop_offsets(n: int, padding: Padding, generator: torch.Generator,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dy, dx)``: ``n`` crop offsets into the padded images, uniform over ``[0, top + bottom]``
    x ``[0, left + right]``, the positions torchvision's ``RandomCrop`` can pick."""
    left, top, right, bottom = padding
    dy = torch.randint(0, top + bottom + 1, (n,), generator=generator, device=device)
    dx = torch.randint(0, left + right + 1, (n,), generator=generator, device=device)
    return dy, dx


def draw_flips(n: int, p: float, generator: torch.Generator,
               device: torch.device) -> torch.Tensor:
    """``n`` coins, each true (mirror the image) with probability ``p``."""
    return torch.rand(n, generator=generator, device=device) < p


def draw_cutout(n: int, size: int, h: int, w: int, generator: torch.Generator,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(top, left)``: the corners of ``n`` ``size`` x ``size`` squares (``size`` at most the
    image's) placed uniformly inside ``h`` x ``w`` images."""
    size = min(size, h, w)
    top = torch.randint(0, h - size + 1, (n,), generator=generator, device=device)
    left = torch.randint(0, w - size + 1, (n,), generator=generator, device=device)
    return top, left


# torchvision's RandomErasing defaults: the area fraction, the aspect ratio (log-uniform), and
# the tries at a rectangle that fits before giving up on the image.
ERASE_SCALE = (0.02, 0.33)
ERASE_RATIO = (0.3, 3.3)
ERASE_TRIES = 10


def draw_erasing(n: int, p: float, h: int, w: int, generator: torch.Generator,
                 device: torch.device) -> tuple[torch.Tensor, ...]:
    """``(top, left, height, width)`` of the rectangle erased in each of ``n`` ``h`` x ``w``
    images, drawn as torchvision's ``RandomErasing(p)`` draws one: with probability ``p``, up to
    10 tries of an area fraction in ``ERASE_SCALE`` and a log-uniform aspect ratio in
    ``ERASE_RATIO``, the first rectangle that fits, placed uniformly; height 0: none."""
    erase = torch.rand(n, generator=generator, device=device) < p
    area = torch.empty(n, ERASE_TRIES, device=device).uniform_(*ERASE_SCALE, generator=generator)
    log_ratio = torch.empty(n, ERASE_TRIES, device=device).uniform_(
        math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1]), generator=generator)
    area, ratio = area * (h * w), log_ratio.exp()
    heights, widths = (area * ratio).sqrt().round().long(), (area / ratio).sqrt().round().long()
    fits = (heights < h) & (widths < w)
    first = fits.long().argmax(dim=1, keepdim=True)  # the first try that fits
    keep = erase & fits.any(dim=1)
    height = torch.where(keep, heights.gather(1, first)[:, 0], 0)
    width = torch.where(keep, widths.gather(1, first)[:, 0], 0)
    spots = torch.rand(2, n, generator=generator, device=device)
    top = (spots[0] * (h - height + 1)).long()
    left = (spots[1] * (w - width + 1)).long()
    return top, left, height, width


def apply_erasing(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
                  height: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """Set each image's rectangle (as :func:`draw_erasing` gives it) to 0, in place: after
    normalisation, the mean colour, as ``RandomErasing(value=0)`` does."""
    _, _, h, w = images.shape
    ys = torch.arange(h, device=images.device)[None, :]
    xs = torch.arange(w, device=images.device)[None, :]
    rows = (ys >= top[:, None]) & (ys < (top + height)[:, None])
    cols = (xs >= left[:, None]) & (xs < (left + width)[:, None])
    return images.masked_fill_((rows[:, :, None] & cols[:, None, :])[:, None], 0)


# --------------------------------------------------------------------------- applying them


def _windows(padded: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Every ``h`` x ``w`` window of every image of a contiguous ``[N, C, Hp, Wp]`` tensor, as one
    overlapping (strided, copy-free) view ``[K, C, h, w]``: window ``(i, y, x)`` is entry
    ``i * C * Hp * Wp + y * Wp + x``."""
    n, c, hp, wp = padded.shape
    last = (n - 1) * c * hp * wp + (hp - h) * wp + (wp - w)
    return padded.as_strided((last + 1, c, h, w), (1, hp * wp, wp, 1))


def _crop_padded(padded: torch.Tensor, offsets: torch.Tensor, h: int, w: int,
                 slots: torch.Tensor | None = None) -> torch.Tensor:
    """Image ``slots[i]`` (default ``i``) of ``padded`` cropped at flat offset ``offsets[i]``
    (``dy * Wp + dx``): one ``index_select`` of whole windows (row copies), not a gather of
    single pixels."""
    n, c, hp, wp = padded.shape
    if len(offsets) == 0:
        return padded.new_empty((0, c, h, w))
    if slots is None:
        slots = torch.arange(len(offsets), device=padded.device)
    return _windows(padded.contiguous(), h, w).index_select(0, slots * (c * hp * wp) + offsets)


def window_crop_flip(source: torch.Tensor, padding: Padding, mode: str, dy: torch.Tensor,
                     dx: torch.Tensor, flip: torch.Tensor | None, chunk: int) -> Cropper:
    """Crop at ``(dy, dx)`` and mirror where ``flip``, by copying windows (the CPU's way): a chunk's
    images go into the interior of slots ``[0, k)`` of a zero-bordered buffer (of ``chunk``
    images, reused), their mirror images into slots ``[k, 2k)``, then one ``index_select`` of
    whole windows crops and flips them all. The buffer's left and right borders are both
    ``max(left, right)`` wide, since mirroring swaps them:
    ``flip(crop(pad(x), dy, dx)) = crop(pad(flip(x)), dy, left + right - dx)`` with the mirror
    image's left border being the original's right one. Reflect and edge padding fill the
    whole slot with the padded image instead (their borders are mirror-symmetric, so the same
    identity holds)."""
    left, top, right, bottom = padding
    side = max(left, right)
    filled = sum(padding) > 0 and mode != "constant"
    _, c, h, w = source.shape
    row = w + 2 * side
    shift = dy * row
    offsets = shift + (side - left) + dx
    if flip is not None:
        offsets = torch.where(flip, shift + (side + left) - dx, offsets)
    buffer = source.new_zeros((chunk * (2 if flip is not None else 1), c, h + top + bottom, row))

    def crop(idx: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        k = len(idx)
        slots = buffer[: 2 * k if flip is not None else k]
        interior = slots[:, :, top : top + h, side : side + w]
        # Gathering into a contiguous tensor and copying that is faster than
        # index_select(out=interior); mirroring it is faster than mirroring the interior.
        images = source.index_select(0, idx)
        if filled:
            images = pad_images(images, (side, top, side, bottom), mode)
            interior = slots
        interior[:k].copy_(images)
        slot = torch.arange(k, device=idx.device)
        if flip is not None:
            interior[k:].copy_(images.flip(-1))
            slot = slot + k * flip[start:stop]
        return _crop_padded(slots, offsets[start:stop], h, w, slot)

    return crop


def gather_crop_flip(source: torch.Tensor, padding: Padding, mode: str, dy: torch.Tensor,
                     dx: torch.Tensor, flip: torch.Tensor | None, chunk: int) -> Cropper:
    """:func:`window_crop_flip`'s crops and flips with one gather of single pixels from a padded
    chunk (the GPU's way: one kernel, and no overlapping views, which not every backend copies
    lazily)."""
    left, top, right, bottom = padding
    filled = sum(padding) > 0 and mode != "constant"
    _, c, h, w = source.shape
    dev = source.device
    buffer = source.new_zeros((chunk, c, h + top + bottom, w + left + right))
    rows = torch.arange(h, device=dev)
    cols = torch.arange(w, device=dev)
    channels = torch.arange(c, device=dev)[None, :, None, None]

    def crop(idx: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        k = len(idx)
        padded = buffer[:k]
        if filled:
            padded.copy_(pad_images(source.index_select(0, idx), padding, mode))
        else:
            padded[:, :, top : top + h, left : left + w] = source.index_select(0, idx)
        ys = (dy[start:stop, None] + rows)[:, None, :, None]
        xs = cols[None, :].expand(k, w)
        if flip is not None:  # column j of a mirrored crop is column w - 1 - j of the crop
            xs = torch.where(flip[start:stop, None], w - 1 - xs, xs)
        xs = (dx[start:stop, None] + xs)[:, None, None, :]
        picked = torch.arange(k, device=dev)[:, None, None, None]
        return padded[picked, channels, ys, xs]

    return crop


def cutout_mask(shape: torch.Size, size: int, top: torch.Tensor,
                left: torch.Tensor) -> torch.Tensor:
    """``[N, 1, H, W]`` bool, true on the ``size`` x ``size`` square at ``(top, left)``."""
    _, _, h, w = shape
    dev = top.device
    ys = torch.arange(h, device=dev)[None, :]
    xs = torch.arange(w, device=dev)[None, :]
    in_rows = (ys >= top[:, None]) & (ys < top[:, None] + size)
    in_cols = (xs >= left[:, None]) & (xs < left[:, None] + size)
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


def apply_cutout(images: torch.Tensor, size: int, top: torch.Tensor, left: torch.Tensor, *,
                 inplace: bool = False) -> torch.Tensor:
    """Zero the ``size`` x ``size`` square (at most the image) at ``(top[i], left[i])`` of
    image ``i``; ``inplace`` writes into ``images``."""
    mask = cutout_mask(images.shape, min(size, *images.shape[2:]), top, left)
    return images.masked_fill_(mask, 0) if inplace else images.masked_fill(mask, 0)


# --------------------------------------------------------------------------- draw and apply


def batch_crop(images: torch.Tensor, padding: Padding, generator: torch.Generator,
               mode: str = "constant") -> torch.Tensor:
    """RandomCrop(H x W, padding, padding_mode=mode) for every image of a batch, each with its
    own offset: padding as :func:`pad_images`, offsets as :func:`draw_crop_offsets`."""
    if sum(padding) == 0:
        return images
    n = len(images)
    dy, dx = draw_crop_offsets(n, padding, generator, images.device)
    crop = window_crop_flip(images, padding, mode, dy, dx, None, n)
    return crop(torch.arange(n, device=images.device), 0, n)


def batch_flip(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror the images whose entry of the bool vector ``flip`` is true."""
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def batch_cutout(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero a ``size`` x ``size`` square at a random position (inside the image) per sample."""
    n, _, h, w = images.shape
    top, left = draw_cutout(n, size, h, w, generator, images.device)
    return apply_cutout(images, size, top, left)
