"""Per-sample transforms, normalisation, presets, the seed's asymmetric crop padding and the
epoch-seeded loader."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from imgcls.config import LoaderConfig, TransformConfig, build_config, load_yaml
from imgcls.data.loaders import EpochLoader
from imgcls.data.transforms import (
    HALF,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ResizeIfNeeded,
    apply_preset,
    build_transform,
    denormalize,
    resolve_normalization,
)
from imgcls.errors import ImgclsError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def steps(transform: v2.Compose) -> list:
    return list(transform.transforms)


def of_type(transform: v2.Compose, kind: type) -> list:
    return [s for s in steps(transform) if isinstance(s, kind)]


def rgb_tensor(height: int, width: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=g)


def rgb_pil(height: int, width: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(rgb_tensor(height, width, seed).permute(1, 2, 0).numpy(), "RGB")


# --------------------------------------------------------------------------- shapes and dtypes

INPUTS = {
    "tensor_40x50": lambda: rgb_tensor(40, 50),
    "tensor_32x32": lambda: rgb_tensor(32, 32),
    "pil_30x50": lambda: rgb_pil(30, 50),
    "pil_tall_90x20": lambda: rgb_pil(90, 20),
}
CONFIGS_BY_NAME = {
    "auto": TransformConfig(),
    "none": TransformConfig(preset="none"),
    "cifar": TransformConfig(preset="cifar"),
    "imagenet": TransformConfig(preset="imagenet"),
    "resize": TransformConfig(preset="none", resize=40, center_crop=True),
    "seed_crop": TransformConfig(preset="none", random_crop=True, crop_padding=[0, 2, 3, 4]),
    "everything": TransformConfig(
        preset="none", random_crop=True, hflip=0.5, rotation=10, color_jitter=[0.2, 0.2, 0.2, 0.1],
        grayscale=0.2, affine_degrees=5, affine_translate=0.1, affine_scale=[0.9, 1.1],
    ),
}


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("size", [32, 17, 64, 96, 224])
@pytest.mark.parametrize("cfg_name", list(CONFIGS_BY_NAME))
def test_output_shape_and_dtype(train, size, cfg_name):
    cfg = CONFIGS_BY_NAME[cfg_name]
    transform = build_transform(
        cfg, train=train, image_size=size, mean_std=(IMAGENET_MEAN, IMAGENET_STD)
    )
    torch.manual_seed(0)
    for name, make in INPUTS.items():
        out = transform(make())
        assert isinstance(out, torch.Tensor), name
        assert out.shape == (3, size, size), name
        assert out.dtype == torch.float32, name
        assert torch.isfinite(out).all(), name


@pytest.mark.parametrize("train", [True, False])
def test_unnormalised_output_is_in_unit_range(train):
    transform = build_transform(TransformConfig(), train=train, image_size=32)
    torch.manual_seed(0)
    for make in INPUTS.values():
        out = transform(make())
        assert out.min() >= 0.0 and out.max() <= 1.0


def test_native_size_skips_the_resize():
    img = rgb_tensor(32, 32)
    cfg = TransformConfig(preset="none")
    t = build_transform(cfg, train=False, image_size=32, native_size=32)
    assert not of_type(t, v2.Resize)
    assert torch.allclose(t(img), img.float() / 255, atol=1e-6)
    t = build_transform(cfg, train=False, image_size=32, native_size=None)
    assert of_type(t, ResizeIfNeeded)  # sizes unknown up front: checked per image
    assert torch.allclose(t(img), img.float() / 255, atol=1e-6)  # a 32 px image: untouched
    assert t(rgb_tensor(40, 24)).shape == (3, 32, 32)


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("size", [32, 224])
def test_eval_transform_is_deterministic(size):
    transform = build_transform(
        TransformConfig(), train=False, image_size=size, mean_std=(IMAGENET_MEAN, IMAGENET_STD)
    )
    for make in INPUTS.values():
        img = make()
        torch.manual_seed(1)
        a = transform(img)
        torch.manual_seed(2)
        b = transform(img)
        c = transform(img)
        assert torch.equal(a, b) and torch.equal(b, c)


def test_eval_transform_of_preset_with_augmentation_keys_is_deterministic():
    cfg = CONFIGS_BY_NAME["everything"]
    transform = build_transform(cfg, train=False, image_size=32)
    img = rgb_tensor(32, 32)
    outs = [transform(img) for _ in range(5)]
    assert all(torch.equal(outs[0], o) for o in outs)


def test_train_transform_with_preset_is_random():
    transform = build_transform(TransformConfig(), train=True, image_size=32, native_size=32)
    img = rgb_tensor(32, 32)
    torch.manual_seed(0)
    outs = [transform(img) for _ in range(10)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    # and reproducible from the torch seed
    torch.manual_seed(0)
    again = [transform(img) for _ in range(10)]
    assert all(torch.equal(a, b) for a, b in zip(outs, again, strict=True))


# --------------------------------------------------------------------------- normalisation


def test_normalisation_of_a_constant_image():
    value = 51  # 51 / 255 = 0.2
    img = torch.full((3, 32, 32), value, dtype=torch.uint8)
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 0.1]
    out = build_transform(
        TransformConfig(), train=False, image_size=32, mean_std=(mean, std)
    )(img)
    expected = [(0.2 - m) / s for m, s in zip(mean, std, strict=True)]  # 0.2, 0.0, -1.0
    for c in range(3):
        assert torch.allclose(out[c], torch.full((32, 32), expected[c]), atol=1e-6)


def test_half_normalisation_maps_to_minus_one_one():
    t = build_transform(TransformConfig(), train=False, image_size=32, mean_std=(HALF, HALF))
    assert torch.allclose(t(torch.zeros(3, 32, 32, dtype=torch.uint8)), torch.tensor(-1.0))
    assert torch.allclose(t(torch.full((3, 32, 32), 255, dtype=torch.uint8)), torch.tensor(1.0))


def test_pil_and_tensor_inputs_give_the_same_output():
    tensor = rgb_tensor(32, 32, seed=3)
    pil = Image.fromarray(tensor.permute(1, 2, 0).numpy(), "RGB")
    t = build_transform(
        TransformConfig(), train=False, image_size=32, mean_std=(IMAGENET_MEAN, IMAGENET_STD)
    )
    assert torch.equal(t(tensor), t(pil))


def norm(mode: str, **kw) -> TransformConfig:
    return TransformConfig(normalize=mode, **kw)


CIFAR_STATS = ([0.49, 0.48, 0.45], [0.25, 0.24, 0.26])


@pytest.mark.parametrize(
    ("cfg", "model_default", "pretrained", "stats", "expected"),
    [
        # auto: pretrained weights want ImageNet statistics, even when the dataset's are known
        (norm("auto"), "dataset", True, CIFAR_STATS, (IMAGENET_MEAN, IMAGENET_STD)),
        # auto: an ImageNet-style model
        (norm("auto"), "imagenet", False, CIFAR_STATS, (IMAGENET_MEAN, IMAGENET_STD)),
        # auto: a small model trained from scratch on a dataset with known statistics
        (norm("auto"), "dataset", False, CIFAR_STATS, CIFAR_STATS),
        # auto: statistics unknown -> ImageNet
        (norm("auto"), "dataset", False, None, (IMAGENET_MEAN, IMAGENET_STD)),
        (norm("dataset"), "imagenet", True, CIFAR_STATS, CIFAR_STATS),
        (norm("dataset"), "dataset", False, None, (IMAGENET_MEAN, IMAGENET_STD)),
        (norm("imagenet"), "dataset", False, CIFAR_STATS, (IMAGENET_MEAN, IMAGENET_STD)),
        (norm("half"), "imagenet", True, CIFAR_STATS, (HALF, HALF)),
        (norm("none"), "imagenet", True, CIFAR_STATS, None),
        (norm("custom", mean=[0.1, 0.2, 0.3], std=[0.4, 0.5, 0.6]), "imagenet", True,
         CIFAR_STATS, ([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])),
    ],
)
def test_resolve_normalization(cfg, model_default, pretrained, stats, expected):
    got = resolve_normalization(
        cfg, model_default=model_default, pretrained=pretrained, dataset_mean_std=stats
    )
    if expected is None:
        assert got is None
    else:
        assert got is not None
        assert list(got[0]) == pytest.approx(list(expected[0]))
        assert list(got[1]) == pytest.approx(list(expected[1]))


def test_resolve_normalization_returns_copies():
    got = resolve_normalization(
        norm("imagenet"), model_default="imagenet", pretrained=False, dataset_mean_std=None
    )
    got[0][0] = 123.0
    assert IMAGENET_MEAN[0] == 0.485


# --------------------------------------------------------------------------- seed padding


def coordinate_image(size: int = 32) -> torch.Tensor:
    """Channel 0 holds column + 1, channel 1 row + 1, channel 2 is 255: padding (0) is visible."""
    cols = torch.arange(1, size + 1, dtype=torch.uint8).expand(size, size)
    rows = cols.t()
    return torch.stack([cols, rows, torch.full((size, size), 255, dtype=torch.uint8)])


def crop_offsets(cfg: TransformConfig, samples: int) -> set[tuple[int, int]]:
    """Sample the train transform; return the (dx, dy) by which content moved up/left, checking
    (once per offset) that every output pixel is exactly the shifted source pixel or zero."""
    transform = build_transform(cfg, train=True, image_size=32, native_size=32)
    img = coordinate_image()
    torch.manual_seed(0)
    seen = set()
    ii, jj = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    for _ in range(samples):
        out = (transform(img).as_subclass(torch.Tensor) * 255).round().to(torch.int64)
        # the centre pixel is content for every padding tested here
        dx = int(out[0, 16, 16]) - 1 - 16
        dy = int(out[1, 16, 16]) - 1 - 16
        if (dx, dy) in seen:
            continue
        seen.add((dx, dy))
        src_i, src_j = ii + dy, jj + dx
        inside = (src_i >= 0) & (src_i < 32) & (src_j >= 0) & (src_j < 32)
        assert torch.equal(out[2] == 255, inside)
        assert torch.equal(out[0][inside], src_j[inside] + 1)
        assert torch.equal(out[1][inside], src_i[inside] + 1)
        assert (out[:, ~inside] == 0).all()
    return seen


def padded(padding: list[int]) -> TransformConfig:
    return TransformConfig(preset="none", random_crop=True, crop_padding=padding)


def test_seed_asymmetric_padding_offsets():
    # RandomCrop(32, padding=[0, 2, 3, 4]) pads left 0, top 2, right 3, bottom 4: the padded image
    # is 35 wide and 38 high, the crop's corner is x in 0..3, y in 0..6, so a source pixel at
    # (row r, col c) lands at (r - (y - 2), c - x): content moves left by 0..3 pixels (never
    # right) and up by -2..4 pixels.
    seen = crop_offsets(padded([0, 2, 3, 4]), samples=600)
    assert seen == {(dx, dy) for dx in range(0, 4) for dy in range(-2, 5)}


def test_symmetric_padding_offsets_differ():
    seen = crop_offsets(padded([4]), samples=2000)
    assert seen == {(dx, dy) for dx in range(-4, 5) for dy in range(-4, 5)}


def test_two_value_padding_is_left_right_then_top_bottom():
    seen = crop_offsets(padded([1, 3]), samples=600)
    assert seen == {(dx, dy) for dx in range(-1, 2) for dy in range(-3, 4)}


def test_seed_padding_never_blanks_the_left_column():
    cfg = TransformConfig(preset="none", random_crop=True, crop_padding=[0, 2, 3, 4])
    transform = build_transform(cfg, train=True, image_size=32, native_size=32)
    ones = torch.full((3, 32, 32), 255, dtype=torch.uint8)
    torch.manual_seed(0)
    zero_cols = torch.zeros(32, dtype=torch.bool)
    zero_rows = torch.zeros(32, dtype=torch.bool)
    for _ in range(400):
        zero = (transform(ones) == 0).all(0)
        zero_cols |= zero.all(0)
        zero_rows |= zero.all(1)
    # with symmetric padding 4, columns 0..3 would be blanked too
    assert zero_cols.nonzero().flatten().tolist() == [29, 30, 31]
    assert zero_rows.nonzero().flatten().tolist() == [0, 1, 28, 29, 30, 31]


@pytest.mark.parametrize("mode", ["reflect", "edge"])
def test_crop_padding_mode_fills_the_border_from_the_image(mode):
    # translate-by-2 with reflect or edge padding: never a zero pixel, shape kept, for PIL and
    # tensor inputs; the crop's padding_mode is the config's
    cfg = TransformConfig(preset="none", random_crop=True, crop_padding=[2],
                          crop_padding_mode=mode)
    transform = build_transform(cfg, train=True, image_size=32, native_size=32)
    (crop,) = of_type(transform, v2.RandomCrop)
    assert crop.padding_mode == mode
    ones = torch.full((3, 32, 32), 255, dtype=torch.uint8)
    pil = Image.fromarray(np.full((32, 32, 3), 255, np.uint8))
    torch.manual_seed(0)
    for _ in range(50):
        for image in (ones, pil):
            out = transform(image)
            assert out.shape == (3, 32, 32) and bool((out == 1).all())
    plain = build_transform(dataclasses.replace(cfg, crop_padding_mode="constant"), train=True,
                            image_size=32, native_size=32)
    assert any(bool((plain(ones) == 0).any()) for _ in range(50))


def test_crop_padding_mode_is_validated():
    assert build_config().transforms.crop_padding_mode == "constant"
    cfg = build_config(overrides={"transforms.crop_padding_mode": "reflect"})
    assert cfg.transforms.crop_padding_mode == "reflect"
    with pytest.raises(ImgclsError, match="transforms.crop_padding_mode"):
        build_config(overrides={"transforms.crop_padding_mode": "wrap"})


def test_seed_recipe_padding_reaches_random_crop():
    tree = load_yaml(CONFIGS / "simple_v3_seed.yaml")
    cfg = build_config(tree)
    t = build_transform(cfg.transforms, train=True, image_size=32, native_size=32)
    assert len(of_type(t, v2.RandomCrop)) == 1
    (flip,) = of_type(t, v2.RandomHorizontalFlip)
    assert flip.p == 0.5
    assert not of_type(t, v2.Normalize)  # normalize: none
    assert not of_type(t, v2.Resize)
    # without the flip, the recipe's own crop has the seed's offsets (see above)
    no_flip = dataclasses.replace(cfg.transforms, hflip=0.0)
    seen = crop_offsets(no_flip, samples=600)
    assert seen == {(dx, dy) for dx in range(0, 4) for dy in range(-2, 5)}


# --------------------------------------------------------------------------- presets


def test_auto_preset_is_cifar_for_small_images():
    for size in (28, 32, 64):
        cfg = apply_preset(TransformConfig(), size)
        assert cfg.random_crop is True and cfg.crop_padding == [4] and cfg.hflip == 0.5, size
        assert cfg.random_resized_crop is False and cfg.center_crop is False, size


def test_auto_preset_is_imagenet_for_large_images():
    for size in (65, 224):
        cfg = apply_preset(TransformConfig(), size)
        assert cfg.random_resized_crop is True and cfg.center_crop is True, size
        assert cfg.hflip == 0.5 and cfg.random_crop is False, size


def test_named_presets_ignore_the_size():
    assert apply_preset(TransformConfig(preset="cifar"), 224).random_crop is True
    assert apply_preset(TransformConfig(preset="imagenet"), 32).random_resized_crop is True
    assert apply_preset(TransformConfig(preset="none"), 32) == TransformConfig(preset="none")


def test_explicit_keys_override_the_preset():
    cfg = apply_preset(TransformConfig(hflip=0.2, crop_padding=[0, 2, 3, 4]), 32)
    assert cfg.hflip == 0.2
    assert cfg.crop_padding == [0, 2, 3, 4]
    assert cfg.random_crop is True  # the preset still adds what was left at its default
    cfg = apply_preset(TransformConfig(preset="imagenet", hflip=0.9), 224)
    assert cfg.hflip == 0.9 and cfg.random_resized_crop is True


def test_preset_in_the_built_transform():
    t = build_transform(TransformConfig(), train=True, image_size=32, native_size=32)
    (crop,) = of_type(t, v2.RandomCrop)
    assert list(crop.padding) == [4, 4, 4, 4]
    assert of_type(t, v2.RandomHorizontalFlip)[0].p == 0.5
    t = build_transform(TransformConfig(), train=True, image_size=224)
    assert of_type(t, v2.RandomResizedCrop) and not of_type(t, v2.RandomCrop)
    t = build_transform(TransformConfig(), train=False, image_size=224)
    assert of_type(t, v2.CenterCrop)
    assert not of_type(t, v2.RandomResizedCrop) and not of_type(t, v2.RandomHorizontalFlip)
    t = build_transform(TransformConfig(hflip=0.3), train=True, image_size=32)
    assert of_type(t, v2.RandomHorizontalFlip)[0].p == 0.3
    t = build_transform(TransformConfig(preset="none"), train=True, image_size=32)
    assert not of_type(t, v2.RandomCrop) and not of_type(t, v2.RandomHorizontalFlip)


def test_a_key_set_to_its_default_still_overrides_the_preset(tmp_path):
    # "set by the user" is the keys given, not the values that differ from the default
    cfg = build_config(overrides={"transforms.preset": "cifar", "transforms.hflip": 0})
    assert "transforms.hflip" in cfg.explicit and cfg.transforms.hflip == 0.0
    assert apply_preset(cfg.transforms, 32, cfg.explicit).hflip == 0.0
    t = build_transform(cfg.transforms, train=True, image_size=32, native_size=32,
                        explicit=cfg.explicit)
    assert of_type(t, v2.RandomCrop) and not of_type(t, v2.RandomHorizontalFlip)
    # imagenet's eval centre crop is turned off the same way
    cfg = build_config(overrides={"transforms.preset": "imagenet",
                                  "transforms.center_crop": False})
    t = build_transform(cfg.transforms, train=False, image_size=224, explicit=cfg.explicit)
    assert not of_type(t, v2.CenterCrop)
    # a recipe file that writes the default counts as setting it
    recipe = tmp_path / "r.yaml"
    recipe.write_text("transforms: {preset: cifar, hflip: 0.0}\n")
    cfg = build_config(load_yaml(recipe))
    assert apply_preset(cfg.transforms, 32, cfg.explicit).hflip == 0.0
    # keys left alone still get the preset's value
    cfg = build_config(overrides={"transforms.preset": "cifar"})
    assert apply_preset(cfg.transforms, 32, cfg.explicit).hflip == 0.5


def test_hflip_0_turns_the_flip_off_in_the_training_loaders(tmp_path, make_image_folder):
    from imgcls import runtime
    from imgcls.data import create_datasets
    from imgcls.data.pipeline import build_train_loaders, resolve_preprocessing

    root = make_image_folder(tmp_path / "imgs", per_class=4, size=32)
    for loader in ("dataloader", "memory"):
        cfg = build_config(overrides={
            "data.source": str(root), "data.loader": loader, "model.name": "lenet",
            "transforms.preset": "cifar", "transforms.hflip": 0, "train.device": "cpu",
            "data.root": str(tmp_path / "cache")})
        data = create_datasets(cfg.data, cfg.train.seed)
        prep = resolve_preprocessing(cfg, data)
        loaders = build_train_loaders(cfg, data, prep, runtime.DistInfo(), torch.device("cpu"))
        if loader == "memory":
            assert loaders.in_memory and loaders.train.hflip == 0.0
        else:
            t = loaders.train.dataset.transform
            assert of_type(t, v2.RandomCrop) and not of_type(t, v2.RandomHorizontalFlip)


def test_saved_configs_keep_what_the_user_set():
    from imgcls.config import flatten, from_saved

    cfg = build_config(overrides={"transforms.preset": "cifar", "transforms.hflip": 0})
    saved = cfg.to_saved()  # config.yaml and a checkpoint's config
    assert saved["explicit"] == ["transforms.hflip", "transforms.preset"]
    again = from_saved(saved)
    assert again == cfg and again.explicit == cfg.explicit
    assert build_config(saved).explicit == cfg.explicit
    # read as a recipe (--config runs/X/config.yaml): the set keys and non-defaults only
    assert flatten(saved) == {"transforms.preset": "cifar", "transforms.hflip": 0.0}
    # a config saved before the list existed: the keys that differ from their defaults, so
    # an old run resumes with the preset's flip as it trained
    # (and the monitor it chose best.pt by, whatever today's default would be)
    old = from_saved(cfg.to_dict())
    assert old.explicit == {"transforms.preset", "train.monitor"}
    assert apply_preset(old.transforms, 32, old.explicit).hflip == 0.5


def test_eval_center_crop_keeps_the_centre():
    # ImageNet-style eval at 224: shorter side to 256, then the central 224 x 224.
    img = torch.zeros(3, 256, 256, dtype=torch.uint8)
    img[:, 16:240, 16:240] = 255  # a white square exactly where the centre crop is
    out = build_transform(TransformConfig(), train=False, image_size=224)(img)
    assert out.shape == (3, 224, 224)
    assert (out == 1.0).all()


# --------------------------------------------------------------------------- channels


@pytest.mark.parametrize("train", [True, False])
def test_one_channel_output(train):
    t = build_transform(
        TransformConfig(), train=train, image_size=32, in_channels=1,
        mean_std=(IMAGENET_MEAN, IMAGENET_STD),
    )
    inputs = [
        rgb_tensor(40, 50), rgb_pil(30, 50), Image.new("L", (40, 36), 128),
        torch.full((1, 32, 32), 7, dtype=torch.uint8),
    ]
    for img in inputs:
        out = t(img)
        assert out.shape == (1, 32, 32)
        assert out.dtype == torch.float32


def test_one_channel_normalisation_uses_averaged_statistics():
    mean, std = [0.2, 0.4, 0.6], [0.1, 0.2, 0.3]
    t = build_transform(
        TransformConfig(), train=False, image_size=32, in_channels=1, mean_std=(mean, std)
    )
    # torchvision converts uint8 to grey with weights summing to 0.9999 and truncates, so a grey
    # level can come out one step darker: allow 1/255 before normalisation.
    tol = 1.01 / 255 / 0.2
    gray = torch.full((3, 32, 32), 102, dtype=torch.uint8)  # 0.4 in every channel
    out = t(gray)
    assert torch.allclose(out, torch.full((1, 32, 32), (0.4 - 0.4) / 0.2), atol=tol)
    white = torch.full((3, 32, 32), 255, dtype=torch.uint8)
    assert torch.allclose(t(white), torch.full((1, 32, 32), (1.0 - 0.4) / 0.2), atol=tol)
    # a 3-channel average would differ from any single channel's statistics by far more
    assert not torch.allclose(out, torch.full((1, 32, 32), (0.4 - 0.2) / 0.1), atol=0.5)


# --------------------------------------------------------------------------- denormalize


@pytest.mark.parametrize(
    "mean_std", [(IMAGENET_MEAN, IMAGENET_STD), (HALF, HALF), ([0.1, 0.2, 0.3], [2.0, 0.5, 1.0])]
)
def test_denormalize_inverts_normalisation(mean_std):
    images = torch.stack([rgb_tensor(32, 32, seed=s) for s in range(4)])
    t = build_transform(TransformConfig(), train=False, image_size=32, mean_std=mean_std)
    normalised = torch.stack([t(img) for img in images])
    restored = denormalize(normalised, mean_std)
    assert restored.shape == images.shape
    assert torch.allclose(restored, images.float() / 255, atol=1e-5)


def test_denormalize_one_channel_and_none():
    mean_std = ([0.2, 0.4, 0.6], [0.1, 0.2, 0.3])
    t = build_transform(
        TransformConfig(), train=False, image_size=32, in_channels=1, mean_std=mean_std
    )
    img = torch.full((3, 32, 32), 51, dtype=torch.uint8)
    restored = denormalize(t(img)[None], mean_std)
    assert restored.shape == (1, 1, 32, 32)
    assert torch.allclose(restored, torch.tensor(0.2), atol=1.01 / 255)  # grey rounding
    x = torch.tensor([-0.5, 0.25, 1.5]).view(1, 3, 1, 1)
    assert torch.equal(denormalize(x, None).flatten(), torch.tensor([0.0, 0.25, 1.0]))


# --------------------------------------------------------------------------- EpochLoader


class Indexed(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.tensor([float(i)]), i


def order(loader: EpochLoader) -> list[int]:
    return [int(y) for _, ys in loader for y in ys]


def loader_cfg(**kw) -> LoaderConfig:
    return LoaderConfig(**{"batch_size": 8, **kw})


def test_train_order_is_a_permutation_fixed_per_epoch():
    loader = EpochLoader(Indexed(50), loader_cfg(), train=True, seed=0)
    first = order(loader)
    assert sorted(first) == list(range(50))
    assert first != list(range(50))
    assert order(loader) == first  # same epoch, same order
    loader.set_epoch(0)
    assert order(loader) == first


def test_different_epochs_give_different_orders():
    loader = EpochLoader(Indexed(50), loader_cfg(), train=True, seed=0)
    orders = []
    for epoch in range(4):
        loader.set_epoch(epoch)
        orders.append(tuple(order(loader)))
    assert len(set(orders)) == 4


def test_order_is_a_function_of_seed_and_epoch_only():
    a = EpochLoader(Indexed(50), loader_cfg(), train=True, seed=7)
    history = {}
    for epoch in range(4):
        a.set_epoch(epoch)
        order(a)  # iterate twice: iteration history must not matter
        history[epoch] = order(a)
    b = EpochLoader(Indexed(50), loader_cfg(), train=True, seed=7)
    b.set_epoch(3)  # a resumed run jumps straight to epoch 3
    assert order(b) == history[3]
    b.set_epoch(1)
    assert order(b) == history[1]
    c = EpochLoader(Indexed(50), loader_cfg(), train=True, seed=8)
    c.set_epoch(3)
    assert order(c) != history[3]


def test_shuffle_off_keeps_order():
    loader = EpochLoader(Indexed(20), loader_cfg(shuffle=False), train=True, seed=0)
    loader.set_epoch(3)
    assert order(loader) == list(range(20))


def test_eval_loader_keeps_order():
    loader = EpochLoader(Indexed(37), loader_cfg(shuffle=True), train=False, seed=5)
    assert order(loader) == list(range(37))
    loader.set_epoch(4)
    assert order(loader) == list(range(37))
    sizes = [len(ys) for _, ys in loader]
    assert sizes == [16, 16, 5]  # eval batch defaults to 2 x batch_size, nothing dropped


def test_eval_loader_never_drops_the_last_batch():
    loader = EpochLoader(Indexed(37), loader_cfg(drop_last=True), train=False)
    assert order(loader) == list(range(37))


@pytest.mark.parametrize("n", [50, 51])
def test_two_replicas_shard_the_data(n):
    for epoch in (0, 1):
        shards = []
        for rank in (0, 1):
            loader = EpochLoader(
                Indexed(n), loader_cfg(), train=True, seed=3, num_replicas=2, rank=rank
            )
            loader.set_epoch(epoch)
            shards.append(order(loader))
        assert len(shards[0]) == len(shards[1]) == (n + 1) // 2
        assert set(shards[0]) | set(shards[1]) == set(range(n))
        if n % 2 == 0:
            assert not set(shards[0]) & set(shards[1])
        else:  # DistributedSampler pads the shorter shard with one repeated sample
            assert len(set(shards[0]) & set(shards[1])) == 1


def test_two_replicas_with_drop_last_are_disjoint():
    shards = [
        order(EpochLoader(Indexed(51), loader_cfg(drop_last=True), train=True, seed=3,
                          num_replicas=2, rank=rank))
        for rank in (0, 1)
    ]
    assert not set(shards[0]) & set(shards[1])
    assert len(shards[0]) == len(shards[1]) == 24  # 25 per rank, 3 full batches of 8


@pytest.mark.parametrize(
    ("n", "kw", "train", "replicas", "expected_len", "expected_samples"),
    [
        (50, {}, True, 1, 7, 50),
        (48, {}, True, 1, 6, 48),
        (50, {"drop_last": True}, True, 1, 6, 50),
        (50, {}, False, 1, 4, 50),  # eval batch 16
        (50, {"eval_batch_size": 20}, False, 1, 3, 50),
        (50, {}, True, 2, 4, 25),
        (51, {}, True, 2, 4, 26),
        (51, {"drop_last": True}, True, 2, 3, 25),
        (5, {}, True, 1, 1, 5),
        (5, {"drop_last": True}, True, 1, 0, 5),
    ],
)
def test_len(n, kw, train, replicas, expected_len, expected_samples):
    loader = EpochLoader(
        Indexed(n), loader_cfg(**kw), train=train, seed=0, num_replicas=replicas
    )
    assert len(loader) == expected_len
    assert loader.num_samples == expected_samples
    assert sum(1 for _ in loader) == expected_len


class RandomPerSample(Dataset):
    """Each item draws from torch, NumPy and `random`: a stand-in for random augmentations."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        draws = [float(i), torch.rand(()).item(), float(np.random.rand()), random.random()]
        return torch.tensor(draws, dtype=torch.float64), i


def epoch_draws(loader: EpochLoader) -> torch.Tensor:
    return torch.cat([x for x, _ in loader])


def test_persistent_workers_only_when_not_deterministic():
    cfg = loader_cfg(batch_size=2, num_workers=1, persistent_workers=True)
    assert EpochLoader(RandomPerSample(), cfg, train=True).dataloader.persistent_workers
    loader = EpochLoader(RandomPerSample(), cfg, train=True, deterministic=True)
    assert not loader.dataloader.persistent_workers


@pytest.mark.parametrize("persistent", [False, True], ids=["workers", "persistent_workers"])
def test_worker_randomness_is_a_function_of_seed_and_epoch(persistent):
    # The class promise: "shuffling and worker seeds are a pure function of (seed, epoch) ...
    # a resumed run sees exactly the batches an uninterrupted run would have seen". Persistent
    # workers are seeded once, so deterministic mode (the one that promises exact resume)
    # switches them off.
    cfg = loader_cfg(batch_size=2, num_workers=2, persistent_workers=persistent)
    uninterrupted = EpochLoader(RandomPerSample(), cfg, train=True, seed=3, deterministic=True)
    epoch0 = epoch_draws(uninterrupted)
    uninterrupted.set_epoch(1)
    epoch1 = epoch_draws(uninterrupted)
    resumed = EpochLoader(RandomPerSample(), cfg, train=True, seed=3, deterministic=True)
    resumed.set_epoch(1)
    assert torch.equal(epoch_draws(resumed), epoch1)
    assert not torch.equal(epoch0[:, 1:], epoch1[:, 1:])  # fresh draws every epoch
    # the two workers draw different numbers (NumPy and `random` are seeded per worker too)
    for column in (1, 2, 3):
        assert len(set(epoch1[:, column].tolist())) == 8
