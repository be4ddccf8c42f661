"""Per-sample transforms (torchvision transforms v2): named presets plus the seeds' augmentations.

Images are turned into uint8 tensors first, augmented as tensors, and only then converted to float
and normalised: cheaper than PIL for small images and the same code for PIL or tensor input.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from typing import Any

import torch
from torchvision.transforms import v2

from imgcls.config import TransformConfig
from imgcls.config.sizes import ImageSize, size_hw

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
HALF = [0.5, 0.5, 0.5]

CIFAR_PRESET_MAX_SIZE = 64  # `auto` picks the cifar preset (and policies) up to this size
# What each preset switches on; the keys the user set win (Config.explicit).
PRESETS: dict[str, dict[str, object]] = {
    "none": {},
    "cifar": {"random_crop": True, "crop_padding": [4], "hflip": 0.5},
    "imagenet": {"random_resized_crop": True, "hflip": 0.5, "center_crop": True},
    # handwriting is not mirror-symmetric: shifts only (the digits' 8 px, served at 32, move by
    # up to half a source pixel)
    "digits": {"random_crop": True, "crop_padding": [2]},
}


def resolved_preset(preset: str, image_size: ImageSize) -> str:
    """``transforms.preset`` as a run uses it: ``auto`` is ``cifar`` for small inputs (up to 64
    pixels on the longer side) and ``imagenet`` for larger ones."""
    if preset == "auto":
        return "cifar" if max(size_hw(image_size)) <= CIFAR_PRESET_MAX_SIZE else "imagenet"
    return preset


def apply_preset(cfg: TransformConfig, image_size: ImageSize,
                 explicit: Collection[str] | None = None) -> TransformConfig:
    """Fill in the preset's augmentations wherever the user did not set the key.

    ``explicit``: the dotted keys the user set (:attr:`imgcls.config.Config.explicit`), so
    ``transforms.hflip=0`` turns the preset's flip off; None (a bare TransformConfig): the keys
    that differ from their defaults. ``auto`` is ``cifar`` for small inputs (up to 64 pixels)
    and ``imagenet`` for larger ones.

    >>> apply_preset(TransformConfig(preset="cifar"), 32, {"transforms.hflip"}).hflip
    0.0
    """
    preset = resolved_preset(cfg.preset, image_size)
    defaults = TransformConfig()
    changes = {
        key: value
        for key, value in PRESETS[preset].items()
        if (f"transforms.{key}" not in explicit if explicit is not None
            else getattr(cfg, key) == getattr(defaults, key))
    }
    return dataclasses.replace(cfg, **changes)


def resolve_normalization(
    cfg: TransformConfig,
    *,
    model_default: str,
    pretrained: bool,
    dataset_mean_std: tuple[list[float], list[float]] | None,
) -> tuple[list[float], list[float]] | None:
    """Pick mean/std: ``auto`` uses ImageNet stats for ImageNet-style or pretrained models, the
    dataset's own stats when known (CIFAR), and ImageNet stats otherwise. ``None`` means no
    normalisation (pixels in [0, 1], as the seeds' ``ToTensor()``-only recipes)."""
    mode = cfg.normalize
    if mode == "auto":
        if pretrained or model_default == "imagenet" or dataset_mean_std is None:
            mode = "imagenet"
        else:
            mode = "dataset"
    if mode == "none":
        return None
    if mode == "custom":
        return list(cfg.mean), list(cfg.std)
    if mode == "half":
        return list(HALF), list(HALF)
    if mode == "dataset" and dataset_mean_std is not None:
        return list(dataset_mean_std[0]), list(dataset_mean_std[1])
    return list(IMAGENET_MEAN), list(IMAGENET_STD)


def _channels(values: Sequence[float], in_channels: int) -> list[float]:
    if in_channels == 1 and len(values) == 3:
        return [sum(values) / 3.0]  # greyscale input: one channel, the average statistic
    return list(values)


class ResizeIfNeeded(torch.nn.Module):
    """Resize to ``size`` (H x W; an int: square), passing through images that already have that
    size (a folder of CIFAR-sized images pays nothing)."""

    def __init__(self, size: ImageSize) -> None:
        super().__init__()
        self.size = size_hw(size)
        self.resize = v2.Resize(self.size, antialias=True)

    def forward(self, image: Any) -> Any:
        if tuple(v2.functional.get_size(image)) == self.size:
            return image
        return self.resize(image)


class Cutout(torch.nn.Module):
    """Zero one ``size`` x ``size`` square, placed uniformly inside the image (DeVries and Taylor
    2017); the per-image twin of :func:`imgcls.data.batch_ops.batch_cutout`."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        size = min(self.size, h, w)
        top = int(torch.randint(0, h - size + 1, ()))
        left = int(torch.randint(0, w - size + 1, ()))
        image = image.clone()
        image[..., top : top + size, left : left + size] = 0
        return image


def eval_resize(cfg: TransformConfig, size: ImageSize) -> int | None:
    """The shorter side evaluation resizes images to before the central ``size`` crop
    (``transforms.resize``, or ImageNet's ``max(H, W) * 256/224`` with ``center_crop``: the crop
    then fits either way round); None: images are resized to ``size`` when they differ (the
    preset already applied)."""
    if cfg.resize is not None:
        return cfg.resize
    return round(max(size_hw(size)) * 256 / 224) if cfg.center_crop else None


def _geometry(cfg: TransformConfig, train: bool, image_size: ImageSize,
              native_size: int | None) -> list[torch.nn.Module]:
    """Resizing and cropping to ``image_size`` (H x W): a random resized crop, a resize with a
    central crop, or a resize when needed followed by the random crop."""
    size = size_hw(image_size)
    native = size_hw(native_size) if native_size is not None else None
    if train and cfg.random_resized_crop:
        return [v2.RandomResizedCrop(size, antialias=True)]
    steps: list[torch.nn.Module] = []
    if cfg.resize is not None:
        steps += [v2.Resize(cfg.resize, antialias=True), v2.CenterCrop(size)]
    elif train and cfg.random_crop:
        if native != size:
            steps.append(ResizeIfNeeded(size))
    elif cfg.center_crop and not train:
        # ImageNet-style evaluation: shorter side to max(H, W) * 256/224, then the central crop.
        steps += [v2.Resize(eval_resize(cfg, size), antialias=True), v2.CenterCrop(size)]
    elif native != size:
        steps.append(ResizeIfNeeded(size))
    if train and cfg.random_crop:
        padding = list(cfg.crop_padding)
        steps.append(v2.RandomCrop(size, padding=padding if len(padding) > 1 else padding[0],
                                   padding_mode=cfg.crop_padding_mode))
    return steps


def _train_augmentation(cfg: TransformConfig, size: ImageSize) -> list[torch.nn.Module]:
    """The training-only flips, rotations, affine warps, colour changes and the augmentation
    policy, in that order."""
    steps: list[torch.nn.Module] = []
    if cfg.hflip > 0:
        steps.append(v2.RandomHorizontalFlip(p=cfg.hflip))
    if cfg.rotation > 0:
        steps.append(v2.RandomRotation(cfg.rotation))
    if cfg.affine_degrees > 0 or cfg.affine_translate > 0 or cfg.affine_scale:
        steps.append(
            v2.RandomAffine(
                degrees=cfg.affine_degrees,
                translate=(cfg.affine_translate, cfg.affine_translate)
                if cfg.affine_translate > 0
                else None,
                scale=tuple(cfg.affine_scale) if cfg.affine_scale else None,
            )
        )
    if cfg.color_jitter:
        b, c, s, h = cfg.color_jitter
        steps.append(v2.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h))
    if cfg.grayscale > 0:
        steps.append(v2.RandomGrayscale(p=cfg.grayscale))
    return steps + _policy(cfg.auto_augment, size)


def _policy(name: str, size: ImageSize) -> list[torch.nn.Module]:
    """``transforms.auto_augment``: torchvision's policy (on the uint8 image, as they expect)."""
    if name == "randaugment":
        return [v2.RandAugment()]
    if name == "trivialaugment":
        return [v2.TrivialAugmentWide()]
    if name == "autoaugment":  # the policy searched on data of this size
        small = max(size_hw(size)) <= CIFAR_PRESET_MAX_SIZE
        policy = v2.AutoAugmentPolicy.CIFAR10 if small else v2.AutoAugmentPolicy.IMAGENET
        return [v2.AutoAugment(policy)]
    return []


def build_transform(
    cfg: TransformConfig,
    *,
    train: bool,
    image_size: ImageSize,
    native_size: int | None = None,
    mean_std: tuple[list[float], list[float]] | None = None,
    in_channels: int = 3,
    explicit: Collection[str] | None = None,
) -> v2.Compose:
    """The transform for one split.

    ``image_size``: an int (square) or ``(height, width)``. ``native_size`` is the size every
    source image already has (CIFAR: 32); when it equals ``image_size`` no resize is added.
    ``explicit``: as :func:`apply_preset`'s.

    >>> t = build_transform(TransformConfig(), train=False, image_size=32)
    >>> t(torch.zeros(3, 40, 50, dtype=torch.uint8)).shape
    torch.Size([3, 32, 32])
    """
    cfg = apply_preset(cfg, image_size, explicit)
    # Geometry and colour run on whatever comes in (PIL images from files: Pillow's kernels are
    # the fastest for small images); the tensor conversion comes last.
    steps = _geometry(cfg, train, image_size, native_size)
    if train:
        steps += _train_augmentation(cfg, image_size)
    if in_channels == 1:
        steps.append(v2.Grayscale(num_output_channels=1))
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if mean_std is not None:
        mean, std = mean_std
        steps.append(v2.Normalize(_channels(mean, in_channels), _channels(std, in_channels)))
    if train and cfg.cutout > 0:  # after normalising: the square is the mean colour, as in memory
        steps.append(Cutout(cfg.cutout))
    if train and cfg.random_erasing > 0:  # likewise erased to 0, the mean colour
        steps.append(v2.RandomErasing(p=cfg.random_erasing))
    return v2.Compose(steps)


def denormalize(
    images: torch.Tensor, mean_std: tuple[list[float], list[float]] | None
) -> torch.Tensor:
    """Undo :func:`build_transform`'s normalisation for display (TensorBoard image grids)."""
    if mean_std is None:
        return images.clamp(0, 1)
    channels = images.shape[1]
    mean = torch.tensor(_channels(mean_std[0], channels), device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(_channels(mean_std[1], channels), device=images.device).view(1, -1, 1, 1)
    return (images * std + mean).clamp(0, 1)
