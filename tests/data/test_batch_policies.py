"""Batched RandAugment / TrivialAugmentWide / AutoAugment (imgcls.data.batch_policies) against
torchvision v2: each op's output for given magnitudes (the bytes for colour and pixel ops, the
pixels up to nearest-neighbour ties for geometric ones), the draws' distribution, determinism,
dtype and shape."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode

from imgcls.data.batch_policies import (
    AUTOAUGMENT,
    OP_CODES,
    OP_NAMES,
    UNIFORM_SPACE,
    apply_policy,
    draw_policy,
    magnitude_table,
    select_draws,
)

# torchvision's own op <-> magnitude mapping (the functional call each transform id makes).
_TV = v2.TrivialAugmentWide()
SPACES = {"wide": (v2.TrivialAugmentWide._AUGMENTATION_SPACE, 31),
          "rand": (v2.RandAugment._AUGMENTATION_SPACE, 31),
          "auto": (v2.AutoAugment._AUGMENTATION_SPACE, 10)}
# chi-square critical values at p = 0.001 by degrees of freedom (the seeds are fixed, so a
# test either always passes or always fails; a wrong distribution lands far above these)
CHI2_999 = {6: 22.46, 13: 34.53, 24: 51.18, 30: 59.70}
COLOUR_OPS = ["Identity", "Brightness", "Color", "Contrast", "Sharpness", "Posterize",
              "Solarize", "AutoContrast", "Equalize", "Invert"]
GEOMETRIC_OPS = ["ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"]


def _torchvision(image: torch.Tensor, name: str, magnitude: float) -> torch.Tensor:
    return _TV._apply_image_or_video_transform(image, name, magnitude,
                                               interpolation=InterpolationMode.NEAREST,
                                               fill=_TV._fill)


def _images(n: int, h: int, w: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """Noise plus the cases where rounding and edge handling show: gray (R = G = B) images,
    narrow-range ones, smooth ones and a constant one."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, channels, h, w), dtype=torch.uint8, generator=g)
    x[1::4] = x[1::4, :1].clone()
    x[2::4] = x[2::4] // 16 + 100
    ramp = torch.arange(h * w).view(h, w) * 255 // (h * w)
    x[3::4] = ramp.to(torch.uint8)
    x[0] = 77
    return x


def _every_magnitude(name: str, h: int, w: int) -> list[float]:
    """Every magnitude torchvision's three policies can pass ``name`` on h x w images."""
    values = {0.0}
    for space, bins in SPACES.values():
        if name in space and (table := space[name][0](bins, h, w)) is not None:
            signs = (1, -1) if space[name][1] else (1,)
            values |= {float(v) * s for v in table for s in signs}
    return sorted(values)


def _draws(name: str, magnitudes: list[float]) -> dict[str, torch.Tensor]:
    n = len(magnitudes)
    return {"op": torch.full((n, 1), OP_CODES[name]), "apply": torch.ones(n, 1, dtype=torch.bool),
            "magnitude": torch.tensor(magnitudes, dtype=torch.float64).view(n, 1)}


def _apply_each(images: torch.Tensor, name: str, magnitudes: list[float]) -> tuple:
    ours = apply_policy(images, _draws(name, magnitudes))
    theirs = torch.stack([_torchvision(x, name, m) for x, m in zip(images, magnitudes,
                                                                   strict=True)])
    return ours, theirs


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("name", COLOUR_OPS)
def test_colour_and_pixel_ops_equal_torchvision_bytes(name, channels):
    magnitudes = _every_magnitude(name, 13, 11)
    magnitudes = (magnitudes * 8)[:max(len(magnitudes), 8)]
    ours, theirs = _apply_each(_images(len(magnitudes), 13, 11, channels), name, magnitudes)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("size", [(20, 28), (24, 24), (31, 17)])
@pytest.mark.parametrize("name", GEOMETRIC_OPS)
def test_geometric_ops_equal_torchvision_up_to_nearest_ties(name, size):
    magnitudes = _every_magnitude(name, *size)
    ours, theirs = _apply_each(_images(len(magnitudes), *size), name, magnitudes)
    differ = (ours != theirs).any(dim=1)
    if name.startswith("Translate"):  # whole-pixel shifts: no ties
        assert not differ.any()
    # Our batched grid (one bmm for all images, float64 trig) can differ from torchvision's
    # per-image one in the last float32 bit; where a sample point lies on a pixel boundary
    # (x.5), nearest rounding then picks the neighbour. That touches few pixels of few images.
    assert differ.float().mean() < 0.001, f"{differ.sum()} of {differ.numel()} pixels differ"


def test_a_quarter_turn_of_a_square_image_is_rot90():
    images = _images(2, 8, 8)
    out = apply_policy(images, _draws("Rotate", [90.0, -90.0]))
    assert torch.equal(out[0], torch.rot90(images[0], 1, (-2, -1)))
    assert torch.equal(out[1], torch.rot90(images[1], 3, (-2, -1)))


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment", "autoaugment"])
def test_whole_policies_equal_torchvision_applying_the_same_draws(policy):
    images = _images(96, 16, 16)
    draws = draw_policy(policy, 96, 16, torch.Generator().manual_seed(3))
    ours = apply_policy(images, draws)
    moved = torch.zeros(96, dtype=torch.bool)
    for i, image in enumerate(images):
        slots = zip(draws["op"][i], draws["magnitude"][i], draws["apply"][i], strict=True)
        for code, m, on in slots:
            if on:
                image = _torchvision(image, OP_NAMES[code], float(m))
                moved[i] |= OP_NAMES[code] in GEOMETRIC_OPS
        assert torch.equal(ours[i], image) or moved[i], (i, draws["op"][i])
        assert (ours[i] != image).any(dim=0).float().mean() < 0.02


# --------------------------------------------------------------------------- the draws


def test_magnitude_tables_and_autoaugment_tables_are_torchvisions():
    for kind, (space, bins) in SPACES.items():
        for name, (table, _) in space.items():
            ours, theirs = magnitude_table(name, bins, 20, 28, kind == "wide"), table(bins, 20, 28)
            assert (ours is None and theirs is None) or torch.equal(ours, theirs), (kind, name)
    for key, policy in [("cifar10", v2.AutoAugmentPolicy.CIFAR10),
                        ("imagenet", v2.AutoAugmentPolicy.IMAGENET),
                        ("svhn", v2.AutoAugmentPolicy.SVHN)]:
        assert AUTOAUGMENT[key] == v2.AutoAugment(policy)._policies


def _chi2(counts: torch.Tensor, expected: torch.Tensor | None = None) -> float:
    """Pearson's statistic of ``counts`` against ``expected`` (default: uniform)."""
    expected = counts.sum() / len(counts) if expected is None else expected
    return float(((counts - expected) ** 2 / expected).sum())


def _assert_signs_are_fair(draws: dict[str, torch.Tensor], mask: torch.Tensor) -> None:
    signed = torch.tensor([name in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
                                    "Brightness", "Color", "Contrast", "Sharpness")
                           for name in OP_NAMES])[draws["op"]] & mask
    negative = (draws["sign"][signed] < 0).double()
    assert abs(negative.mean() - 0.5) < 4 * 0.5 / negative.numel() ** 0.5
    assert (draws["sign"][~signed & mask] == 1).all()
    assert torch.equal(draws["magnitude"].abs() * draws["sign"], draws["magnitude"])


def test_trivialaugment_draws_one_uniform_op_with_a_uniform_bin():
    n = 28000
    draws = draw_policy("trivialaugment", n, 32, torch.Generator().manual_seed(0))
    assert draws["op"].shape == (n, 1) and draws["apply"].all()
    ops = draws["op"][:, 0]
    assert _chi2(torch.bincount(ops, minlength=14).double()) < CHI2_999[13]
    assert ops.max() < 14  # never Invert: not in TrivialAugmentWide's space
    space = SPACES["wide"][0]
    for name in UNIFORM_SPACE:
        mags = draws["magnitude"][ops == OP_CODES[name], 0].abs()
        table = space[name][0](31, 32, 32)
        if table is None:
            assert (mags == 0).all()
            continue
        values, multiplicity = table.double().unique(return_counts=True)  # Posterize repeats
        hits = mags.unsqueeze(1) == values.unsqueeze(0)
        assert hits.any(dim=1).all(), name  # every magnitude is one of torchvision's
        expected = len(mags) * multiplicity / 31
        assert _chi2(hits.sum(0).double(), expected) < CHI2_999[len(values) - 1], name
    _assert_signs_are_fair(draws, draws["apply"])


def test_trivialaugment_draws_cover_what_torchvision_draws():
    seen = []
    recorder = v2.TrivialAugmentWide()
    recorder._apply_image_or_video_transform = lambda img, op, m, **_: seen.append((op, m)) or img
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for _ in range(1500):
            recorder(torch.zeros(3, 32, 32, dtype=torch.uint8))
    draws = draw_policy("trivialaugment", 20000, 32, torch.Generator().manual_seed(1))
    ours = {(OP_NAMES[c], m) for c, m in zip(draws["op"][:, 0].tolist(),
                                             draws["magnitude"][:, 0].tolist(), strict=True)}
    assert {(op, float(m)) for op, m in seen} <= ours
    theirs = torch.tensor([UNIFORM_SPACE.index(op) for op, _ in seen])
    table = torch.stack([torch.bincount(theirs, minlength=14),
                         torch.bincount(draws["op"][:, 0], minlength=14)]).double()
    expected = table.sum(1, keepdim=True) * table.sum(0) / table.sum()
    assert float(((table - expected) ** 2 / expected).sum()) < CHI2_999[13]


def test_randaugment_draws_num_ops_uniform_ops_at_the_fixed_magnitude():
    n = 14000
    draws = draw_policy("randaugment", n, (20, 28), torch.Generator().manual_seed(0))
    assert draws["op"].shape == (n, 2) and draws["apply"].all()
    for slot in range(2):
        assert _chi2(torch.bincount(draws["op"][:, slot], minlength=14).double()) < CHI2_999[13]
    space = SPACES["rand"][0]
    for name in UNIFORM_SPACE:
        mags = draws["magnitude"][draws["op"] == OP_CODES[name]].abs()
        table = space[name][0](31, 20, 28)
        assert (mags == (0.0 if table is None else float(table[9]))).all(), name
    _assert_signs_are_fair(draws, draws["apply"])
    three = draw_policy("randaugment", 5, 32, torch.Generator(), num_ops=3, magnitude=30)
    assert three["op"].shape == (5, 3)


@pytest.mark.parametrize(("name", "size", "key"), [
    ("autoaugment", 32, "cifar10"), ("autoaugment", 224, "imagenet"),
    ("autoaugment_imagenet", 32, "imagenet"), ("autoaugment_svhn", 32, "svhn"),
])
def test_autoaugment_draws_uniform_sub_policies_and_their_coins(name, size, key):
    n = 25000
    draws = draw_policy(name, n, size, torch.Generator().manual_seed(0))
    sub = draws["subpolicy"]
    assert _chi2(torch.bincount(sub, minlength=25).double()) < CHI2_999[24]
    space = SPACES["auto"][0]
    for s, ops in enumerate(AUTOAUGMENT[key]):
        mine = sub == s
        for slot, (op, p, magnitude_bin) in enumerate(ops):
            assert (draws["op"][mine, slot] == OP_CODES[op]).all()
            table = space[op][0](10, size, size)
            want = 0.0 if table is None else float(table[magnitude_bin])
            assert (draws["magnitude"][mine, slot].abs() == want).all()
            rate, count = draws["apply"][mine, slot].double().mean(), mine.sum()
            assert abs(rate - p) <= 4.5 * (p * (1 - p) / count) ** 0.5, (s, slot, rate, p)
    _assert_signs_are_fair(draws, torch.ones_like(draws["apply"]))


# --------------------------------------------------------------------------- the contract


def test_the_same_seed_gives_the_same_batch_and_the_global_rng_is_untouched():
    images = _images(32, 16, 16)
    before = torch.get_rng_state()
    outs = [apply_policy(images, draw_policy(p, 32, 16, torch.Generator().manual_seed(s)))
            for p in ("randaugment", "trivialaugment", "autoaugment") for s in (7, 7, 8)]
    assert torch.equal(torch.get_rng_state(), before)
    for i in range(0, 9, 3):
        assert torch.equal(outs[i], outs[i + 1]) and not torch.equal(outs[i], outs[i + 2])


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment", "autoaugment_imagenet"])
def test_dtype_and_shape_are_kept(policy, channels):
    images = _images(20, 12, 10, channels)
    draws = draw_policy(policy, 20, (12, 10), torch.Generator().manual_seed(0))
    out = apply_policy(images, draws)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    half = apply_policy(images[:10], select_draws(draws, slice(0, 10)))
    assert torch.equal(half, out[:10])
    strided = images.transpose(2, 3).contiguous().transpose(2, 3)  # same pixels, other strides
    assert torch.equal(apply_policy(strided, draws), out)


def test_unusable_input_is_a_clear_error():
    draws = draw_policy("trivialaugment", 4, 8, torch.Generator())
    for images, message in [(torch.zeros(4, 3, 8, 8), "uint8"),
                            (torch.zeros(4, 4, 8, 8, dtype=torch.uint8), "1 or 3 channels"),
                            (torch.zeros(5, 3, 8, 8, dtype=torch.uint8), "4 draws for 5"),
                            (torch.zeros(4, 3, 9, 8, dtype=torch.uint8), "draws are for")]:
        with pytest.raises(ValueError, match=message):
            apply_policy(images, draws)
    with pytest.raises(ValueError, match="unknown policy"):
        draw_policy("augmix", 4, 8, torch.Generator())
