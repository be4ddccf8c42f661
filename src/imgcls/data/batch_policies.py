"""RandAugment, TrivialAugmentWide and AutoAugment on whole uint8 ``[N, C, H, W]`` batches.

torchvision's v2 policies draw and apply their ops one image at a time, which keeps the
device-resident :class:`~imgcls.data.memory.MemoryLoader` from offering them. Here
:func:`draw_policy` draws every image's ops, magnitudes and signs at once from a given
``torch.Generator`` (so a loader seeded per seed, rank and epoch is reproducible), and
:func:`apply_policy` applies them looping over op kinds, not images: each kind runs once per op
slot on the images that drew it (:mod:`imgcls.data.batch_policy_ops`). The sampling is
torchvision's (defaults: RandAugment ``num_ops=2, magnitude=9, num_magnitude_bins=31``,
TrivialAugmentWide ``num_magnitude_bins=31``, AutoAugment's CIFAR10/IMAGENET/SVHN tables,
nearest interpolation, zero fill) but not its random stream, so it matches in distribution;
given the same op and magnitude, the colour and pixel ops give torchvision's bytes and the
geometric ones its pixels up to nearest-neighbour ties.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from imgcls.config.sizes import size_hw
from imgcls.data import batch_policy_ops as ops
from imgcls.data.transforms import CIFAR_PRESET_MAX_SIZE

# Op codes are indices into OP_NAMES (torchvision's transform ids). The five geometric ones come
# first, in batch_policy_ops' kind order, so ``code - 1`` is their kind.
OP_NAMES = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
            "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast",
            "Equalize", "Invert")
OP_CODES = {name: code for code, name in enumerate(OP_NAMES)}
GEOMETRIC = (1, 2, 3, 4, 5)
SIGNED = frozenset({"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
                    "Color", "Contrast", "Sharpness"})
KERNELS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "Brightness": ops.brightness, "Color": ops.color, "Contrast": ops.contrast,
    "Sharpness": ops.sharpness, "Posterize": ops.posterize, "Solarize": ops.solarize,
    "AutoContrast": ops.autocontrast, "Equalize": ops.equalize, "Invert": ops.invert,
}
# RandAugment's and TrivialAugmentWide's op space (torchvision's order); AutoAugment adds Invert.
UNIFORM_SPACE = OP_NAMES[:14]
POLICIES = ("randaugment", "trivialaugment", "autoaugment", "autoaugment_cifar10",
            "autoaugment_imagenet", "autoaugment_svhn")

SubPolicy = tuple[tuple[str, float, int | None], tuple[str, float, int | None]]
# torchvision's AutoAugmentPolicy tables: (op, probability, magnitude bin of 10) twice.
AUTOAUGMENT: dict[str, list[SubPolicy]] = {
    "imagenet": [
        (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
        (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
        (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
        (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
        (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
        (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
        (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
        (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
        (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
        (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
        (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
        (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
        (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
        (("Color", 0.4, 0), ("Equalize", 0.6, None)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    ],
    "cifar10": [
        (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
        (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
        (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
        (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
        (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
        (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
        (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
        (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
        (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
        (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
        (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
        (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
        (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
        (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
        (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
        (("Color", 0.9, 9), ("Equalize", 0.6, None)),
        (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
        (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
        (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
        (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
        (("Equalize", 0.8, None), ("Invert", 0.1, None)),
        (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
    ],
    "svhn": [
        (("ShearX", 0.9, 4), ("Invert", 0.2, None)),
        (("ShearY", 0.9, 8), ("Invert", 0.7, None)),
        (("Equalize", 0.6, None), ("Solarize", 0.6, 6)),
        (("Invert", 0.9, None), ("Equalize", 0.6, None)),
        (("Equalize", 0.6, None), ("Rotate", 0.9, 3)),
        (("ShearX", 0.9, 4), ("AutoContrast", 0.8, None)),
        (("ShearY", 0.9, 8), ("Invert", 0.4, None)),
        (("ShearY", 0.9, 5), ("Solarize", 0.2, 6)),
        (("Invert", 0.9, None), ("AutoContrast", 0.8, None)),
        (("Equalize", 0.6, None), ("Rotate", 0.9, 3)),
        (("ShearX", 0.9, 4), ("Solarize", 0.3, 3)),
        (("ShearY", 0.8, 8), ("Invert", 0.7, None)),
        (("Equalize", 0.9, None), ("TranslateY", 0.6, 6)),
        (("Invert", 0.9, None), ("Equalize", 0.6, None)),
        (("Contrast", 0.3, 3), ("Rotate", 0.8, 4)),
        (("Invert", 0.8, None), ("TranslateY", 0.0, 2)),
        (("ShearY", 0.7, 6), ("Solarize", 0.4, 8)),
        (("Invert", 0.6, None), ("Rotate", 0.8, 4)),
        (("ShearY", 0.3, 7), ("TranslateX", 0.9, 3)),
        (("ShearX", 0.1, 6), ("Invert", 0.6, None)),
        (("Solarize", 0.7, 2), ("TranslateY", 0.6, 7)),
        (("ShearY", 0.8, 4), ("Invert", 0.8, None)),
        (("ShearX", 0.7, 9), ("TranslateY", 0.8, 3)),
        (("ShearY", 0.8, 5), ("AutoContrast", 0.7, None)),
        (("ShearX", 0.7, 2), ("Invert", 0.1, None)),
    ],
}

# Draws: per image (leading dim N) and op slot (second dim S: num_ops, 1 or 2),
#   "op" int64 [N, S] codes into OP_NAMES; "magnitude" float64 [N, S], signed, the float
#   torchvision passes for that op (0.0 where the op takes none); "sign" int8 [N, S], +1 or -1
#   (+1 for unsigned ops); "apply" bool [N, S] (AutoAugment's coins; all true otherwise);
#   AutoAugment only: "subpolicy" int64 [N]. "image_size" int64 [2] = (H, W) drawn for.
Draws = dict[str, torch.Tensor]


def magnitude_table(op: str, num_bins: int, height: int, width: int,
                    wide: bool) -> torch.Tensor | None:
    """The magnitudes torchvision's ``_AUGMENTATION_SPACE`` gives ``op`` (float32, or int32 for
    Posterize; ``None`` for ops without one): TrivialAugmentWide's if ``wide``, else the one of
    RandAugment and AutoAugment."""
    if op in ("ShearX", "ShearY"):
        return torch.linspace(0.0, 0.99 if wide else 0.3, num_bins)
    if op in ("TranslateX", "TranslateY"):
        extent = width if op == "TranslateX" else height
        return torch.linspace(0.0, 32.0 if wide else 150.0 / 331.0 * extent, num_bins)
    if op == "Rotate":
        return torch.linspace(0.0, 135.0 if wide else 30.0, num_bins)
    if op in ("Brightness", "Color", "Contrast", "Sharpness"):
        return torch.linspace(0.0, 0.99 if wide else 0.9, num_bins)
    if op == "Posterize":
        return (8 - (torch.arange(num_bins) / ((num_bins - 1) / (6 if wide else 4)))).round().int()
    if op == "Solarize":
        return torch.linspace(1.0, 0.0, num_bins)
    return None


def _tables(names: tuple[str, ...], num_bins: int, height: int, width: int,
            wide: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For ``names``: their op codes, float64 magnitude tables [len(names), num_bins] (zeros for
    ops without magnitudes) and whether each is signed."""
    rows = [magnitude_table(name, num_bins, height, width, wide) for name in names]
    table = torch.stack([torch.zeros(num_bins, dtype=torch.float64) if row is None
                         else row.double() for row in rows])
    codes = torch.tensor([OP_CODES[name] for name in names])
    signed = torch.tensor([name in SIGNED for name in names])
    return codes, table, signed


def _signs(signed: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """-1 where torchvision's ``torch.rand(()) <= 0.5`` would negate a signed op's magnitude."""
    coins = torch.rand(signed.shape, generator=generator, device=generator.device) <= 0.5
    return torch.where(signed & coins, -1, 1).to(torch.int8)


def _draw_uniform(n: int, slots: int, bin_index: int | None, num_bins: int,
                  size: tuple[int, int], generator: torch.Generator, wide: bool) -> Draws:
    """RandAugment (``slots`` ops at bin ``bin_index``) or TrivialAugmentWide (one op, a
    uniform bin): ops uniform over the 14 of UNIFORM_SPACE, independently per slot."""
    codes, table, signed = _tables(UNIFORM_SPACE, num_bins, *size, wide)
    dev = generator.device
    local = torch.randint(len(UNIFORM_SPACE), (n, slots), generator=generator, device=dev)
    if bin_index is None:
        bins = torch.randint(num_bins, (n, slots), generator=generator, device=dev)
    else:
        bins = torch.full((n, slots), bin_index, device=dev)
    sign = _signs(signed.to(dev)[local], generator)
    magnitude = table.to(dev)[local, bins] * sign
    return {"op": codes.to(dev)[local], "magnitude": magnitude, "sign": sign,
            "apply": torch.ones(n, slots, dtype=torch.bool, device=dev)}


def _draw_autoaugment(n: int, policy: str, size: tuple[int, int],
                      generator: torch.Generator) -> Draws:
    """A uniform sub-policy per image, then for each of its two ops an apply coin with the
    op's probability and a sign; magnitudes from 10 bins."""
    subs = AUTOAUGMENT[policy]
    names = tuple(op for sub in subs for op, _, _ in sub)
    codes, table, signed = _tables(names, 10, *size, wide=False)
    bins = torch.tensor([b or 0 for sub in subs for _, _, b in sub])
    probs = torch.tensor([p for sub in subs for _, p, _ in sub], dtype=torch.float64)
    dev = generator.device
    sub = torch.randint(len(subs), (n,), generator=generator, device=dev)
    entry = sub.unsqueeze(1) * 2 + torch.arange(2, device=dev)  # [N, 2] rows of the flat tables
    coins = torch.rand(n, 2, generator=generator, device=dev, dtype=torch.float64)
    sign = _signs(signed.to(dev)[entry], generator)
    magnitude = table.to(dev)[entry, bins.to(dev)[entry]] * sign
    return {"op": codes.to(dev)[entry], "magnitude": magnitude, "sign": sign,
            "apply": coins <= probs.to(dev)[entry], "subpolicy": sub}


def draw_policy(name: str, n: int, image_size: int | tuple[int, int],
                generator: torch.Generator, device: torch.device | str | None = None, *,
                num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31) -> Draws:
    """Draw ``n`` images' ops for policy ``name`` (one of POLICIES) on ``image_size`` (H, W; an
    int is square) images, from ``generator`` only, returned on ``device`` (default: the
    generator's). ``autoaugment`` picks CIFAR10's table up to 64 px (the larger side), else
    IMAGENET's, like :func:`imgcls.data.transforms.build_transform`. The keyword arguments are
    RandAugment's (``num_magnitude_bins`` TrivialAugmentWide's too)."""
    height, width = size_hw(image_size)
    if name == "randaugment":
        if num_ops < 0 or not 0 <= magnitude < num_magnitude_bins:
            raise ValueError(f"need num_ops >= 0 and 0 <= magnitude < num_magnitude_bins, got "
                             f"{num_ops}, {magnitude}, {num_magnitude_bins}")
        draws = _draw_uniform(n, num_ops, magnitude, num_magnitude_bins, (height, width),
                              generator, wide=False)
    elif name == "trivialaugment":
        draws = _draw_uniform(n, 1, None, num_magnitude_bins, (height, width), generator,
                              wide=True)
    elif name in POLICIES:  # autoaugment[_table]
        small = max(height, width) <= CIFAR_PRESET_MAX_SIZE
        table = name.partition("_")[2] or ("cifar10" if small else "imagenet")
        draws = _draw_autoaugment(n, table, (height, width), generator)
    else:
        raise ValueError(f"unknown policy {name!r}; expected one of {POLICIES}")
    draws["image_size"] = torch.tensor([height, width])
    return {key: value.to(device) for key, value in draws.items()} if device else draws


def select_draws(draws: Draws, index: torch.Tensor | slice) -> Draws:
    """The draws of images ``index`` (e.g. one batch of an epoch's draws)."""
    return {key: value if key == "image_size" else value[index] for key, value in draws.items()}


def _check(images: torch.Tensor, draws: Draws) -> None:
    """Clear errors for what torchvision's ops would reject or what the draws do not fit."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 [N, C, H, W] images, got {images.dtype} "
                         f"{tuple(images.shape)}")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"expected 1 or 3 channels, got {images.shape[1]}")
    if len(draws["op"]) != len(images):
        raise ValueError(f"{len(draws['op'])} draws for {len(images)} images")
    size = draws.get("image_size")
    if size is not None and tuple(size.tolist()) != tuple(images.shape[-2:]):
        raise ValueError(f"draws are for {tuple(size.tolist())} images, got "
                         f"{tuple(images.shape[-2:])}")


def apply_policy(images: torch.Tensor, draws: Draws) -> torch.Tensor:
    """``images`` (uint8 [N, C, H, W], C 1 or 3) with each image's drawn ops applied in slot
    order; a new tensor of the same shape and dtype. Per slot, the geometric ops share one
    resample and every other op kind runs once on the images that drew it."""
    _check(images, draws)
    out = images.clone(memory_format=torch.contiguous_format)
    op = draws["op"].to(images.device)
    magnitude = draws["magnitude"].to(images.device)
    apply = draws["apply"].to(images.device)
    for slot in range(op.shape[1]):
        code, active = op[:, slot], apply[:, slot]
        idx = (active & (code >= GEOMETRIC[0]) & (code <= GEOMETRIC[-1])).nonzero().squeeze(1)
        if len(idx):
            warped = ops.geometric(out.index_select(0, idx), code[idx] - GEOMETRIC[0],
                                   magnitude[idx, slot])
            ops.put_images(out, idx, warped)
        for name, kernel in KERNELS.items():
            idx = (active & (code == OP_CODES[name])).nonzero().squeeze(1)
            if len(idx):
                ops.put_images(out, idx, kernel(out.index_select(0, idx), magnitude[idx, slot]))
    return out
