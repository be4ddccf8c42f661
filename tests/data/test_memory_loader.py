"""The device-resident batch loader: batches, order, augmentation semantics against torchvision's
per-sample transforms, sharding, and the decode cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_same_weights, interrupt_and_resume
from PIL import Image
from torch.utils.data import DistributedSampler
from torchvision.transforms import v2

from imgcls import api
from imgcls.config import LoaderConfig, TransformConfig, build_config
from imgcls.data.batch_ops import batch_crop, padding_ltrb
from imgcls.data.cifar import load_cifar
from imgcls.data.decode_cache import decode_to_tensor
from imgcls.data.folder import ImageFileDataset, scan_folder
from imgcls.data.loaders import EpochLoader, TransformedDataset
from imgcls.data.memory import Augmentation, MemoryLoader
from imgcls.data.pipeline import keep_a_lone_partial_batch
from imgcls.data.transforms import apply_preset, build_transform
from imgcls.errors import ImgclsError

CIFAR_STATS = ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])


def _label_coded(n: int, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i is filled with the value i (n <= 255): its label can be read from its pixels."""
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, size, size)
    return images.contiguous(), torch.arange(n)


def _coordinate_coded(size: int = 8) -> torch.Tensor:
    """One image whose channel 0 is row + 1 and channel 1 is column + 1 (0 marks padding)."""
    rows = torch.arange(1, size + 1).view(size, 1).expand(size, size)
    cols = torch.arange(1, size + 1).view(1, size).expand(size, size)
    return torch.stack([rows, cols, torch.full_like(rows, 7)]).to(torch.uint8)


def _all_batches(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


# --------------------------------------------------------------------------- batches and order


def test_shapes_dtypes_and_lengths():
    images, labels = _label_coded(10)
    loader = MemoryLoader(images, labels, batch_size=4, train=True, crop_padding=[2], hflip=0.5,
                          mean_std=CIFAR_STATS)
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    assert [tuple(x.shape) for x, _ in batches] == [(4, 3, 8, 8), (4, 3, 8, 8), (2, 3, 8, 8)]
    assert all(x.dtype == torch.float32 and y.dtype == torch.int64 for x, y in batches)
    dropped = MemoryLoader(images, labels, batch_size=4, train=True, drop_last=True)
    assert len(dropped) == len(list(dropped)) == 2
    evaluation = MemoryLoader(images, labels, batch_size=4, train=False, drop_last=True)
    assert len(evaluation) == 3  # evaluation never drops images


def test_labels_stay_aligned_and_every_image_comes_once():
    images, labels = _label_coded(50)
    loader = MemoryLoader(images, labels, batch_size=8, train=True, crop_padding=[4], hflip=0.5,
                          cutout=2)
    for epoch in range(3):
        loader.set_epoch(epoch)
        x, y = _all_batches(loader)
        # crop padding and cutout add zeros; the brightest pixel is still the image's own value
        decoded = (x.amax(dim=(1, 2, 3)) * 255).round().long()
        assert torch.equal(decoded, y)
        assert sorted(y.tolist()) == list(range(50))
        assert y.tolist() != list(range(50))  # shuffled


def test_order_is_a_function_of_seed_and_epoch_and_matches_the_dataloader():
    images, labels = _label_coded(40)

    def order(seed: int, epoch: int) -> list[int]:
        loader = MemoryLoader(images, labels, batch_size=16, train=True, seed=seed)
        loader.set_epoch(epoch)
        return _all_batches(loader)[1].tolist()

    assert order(0, 3) == order(0, 3)
    assert order(0, 3) != order(0, 4)
    assert order(0, 3) != order(1, 3)
    # the same permutation the DataLoader path's DistributedSampler draws
    epoch_loader = EpochLoader(TransformedDataset(list(zip(images, labels.tolist(),
                                                           strict=True)), lambda im: im),
                               LoaderConfig(batch_size=16), train=True, seed=1)
    epoch_loader.set_epoch(2)
    assert [int(y) for _, ys in epoch_loader for y in ys] == order(1, 2)


def test_augmentation_is_reproducible_for_a_resumed_run():
    images = torch.randint(0, 256, (30, 3, 8, 8), dtype=torch.uint8)
    kwargs = dict(batch_size=8, train=True, crop_padding=[2], hflip=0.5, cutout=3, seed=5)
    first = MemoryLoader(images, torch.arange(30), **kwargs)
    runs = []
    for epoch in range(3):
        first.set_epoch(epoch)
        runs.append(_all_batches(first)[0])
    resumed = MemoryLoader(images, torch.arange(30), **kwargs)
    resumed.set_epoch(2)
    assert torch.equal(_all_batches(resumed)[0], runs[2])
    assert not torch.equal(runs[1], runs[2])


@pytest.mark.parametrize("flip_mode", ["random", "alternate"])
def test_chunk_size_never_changes_the_batches(flip_mode):
    # The epoch's augmentation is drawn up front and applied a chunk at a time: neither the chunk
    # size (a speed/memory knob) nor the way of cropping (window copies on the CPU, a pixel gather
    # elsewhere) may change a single pixel, at chunk boundaries or elsewhere.
    images = torch.randint(0, 256, (77, 3, 9, 7), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    kwargs = dict(batch_size=8, train=True, drop_last=True, seed=2, mean_std=CIFAR_STATS,
                  crop_padding=[0, 2, 3, 1], hflip=0.5, flip_mode=flip_mode, cutout=3)
    runs = []
    for chunk_size, windows in [(None, True), (1, True), (24, True), (1000, True), (None, False),
                                (16, False)]:
        loader = MemoryLoader(images, torch.arange(77), chunk_size=chunk_size, **kwargs)
        loader._window_crop = windows  # the CPU's window copies, or the GPU's pixel gather
        loader.set_epoch(1)
        runs.append(list(loader))
    assert len(runs[0]) == 9  # 77 // 8, the tail dropped
    for run in runs[1:]:
        for (x, y), (x0, y0) in zip(run, runs[0], strict=True):
            assert torch.equal(x, x0) and torch.equal(y, y0)


@pytest.mark.parametrize("windows", [True, False])
@pytest.mark.parametrize("padding", [[3, 1, 0, 2], [0, 0, 2, 1]])
def test_batches_are_exactly_the_drawn_crop_then_flip(windows, padding):
    # Per image, against a direct implementation: zero pad (left, top, right, bottom), crop at
    # the drawn offset, then mirror when the drawn coin says so; labels stay with their images.
    images = torch.randint(1, 256, (40, 3, 6, 5), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(3))
    left, top, right, bottom = padding
    loader = MemoryLoader(images, torch.arange(40), batch_size=6, train=True, seed=7,
                          crop_padding=padding, hflip=0.5, chunk_size=12)
    loader._window_crop = windows
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        x, y = _all_batches(loader)
        draws = loader._draw(40)  # the same seeded draws the iteration made
        assert torch.equal(y, loader.indices())
        for i, label in enumerate(y.tolist()):
            padded = torch.nn.functional.pad(images[label], (left, right, top, bottom))
            dy, dx = int(draws["dy"][i]), int(draws["dx"][i])
            expected = padded[:, dy : dy + 6, dx : dx + 5]
            if draws["flip"][i]:
                expected = expected.flip(-1)
            assert torch.equal((x[i] * 255).round().to(torch.uint8), expected), (epoch, i)
        assert 0 < int(draws["flip"].sum()) < 40


def test_eval_mode_has_fixed_order_and_no_augmentation():
    images = torch.randint(0, 256, (9, 3, 8, 8), dtype=torch.uint8)
    loader = MemoryLoader(images, torch.arange(9), batch_size=4, train=False, crop_padding=[4],
                          hflip=1.0, cutout=4)
    loader.set_epoch(7)
    x, y = _all_batches(loader)
    assert y.tolist() == list(range(9))
    assert torch.equal(x, images.float().mul(1.0 / 255))


# Recorded batches: sha256 (16 hex digits) of every batch of epochs 0 and 1 and of a pass resumed
# at batch 2 of epoch 1, made before the loader took its crops, flips and cutouts from
# imgcls.data.batch_ops. A refactoring must keep every bit (torch's CPU generator drew them: a
# torch release that changes randint, rand or randperm may change them too).
_STATS = ([0.49, 0.48, 0.45], [0.25, 0.24, 0.26])
_FULL = dict(crop_padding=[3, 1, 0, 2], hflip=0.5, cutout=3, mean_std=_STATS, chunk_size=16)
RECORDED_BATCHES = {  # name: (loader arguments, window crop, digest)
    "constant windows": (_FULL, True, "3e34750ae8e90c54"),
    "constant gather": (_FULL, False, "3e34750ae8e90c54"),
    "reflect alternate windows": (dict(_FULL, crop_padding_mode="reflect",
                                       flip_mode="alternate"), True, "998e0f1d3d39d04f"),
    "edge alternate gather": (dict(_FULL, crop_padding_mode="edge", flip_mode="alternate"),
                              False, "c34b277d5cb1cba3"),
    "flip only gather": (dict(hflip=0.3), False, "e4ac13db3ec342bc"),
    "cutout only": (dict(cutout=20, mean_std=_STATS), True, "e0702c29342d24e8"),
    "rank 1 of 3, drop_last": (dict(crop_padding=[2], hflip=0.5, cutout=2, num_replicas=3, rank=1,
                                    drop_last=True), True, "8ba07fe5549365f1"),
    "balanced, rank 1 of 2": (dict(sampler="balanced", crop_padding=[1], hflip=0.5,
                                   num_replicas=2, rank=1), False, "0c69b9f8da519e81"),
    "evaluation": (dict(train=False, mean_std=_STATS, crop_padding=[4], hflip=1.0, cutout=3,
                        num_replicas=3, rank=2), True, "1c648a0fe37651aa"),
}


def _batches_digest(loader: MemoryLoader, windows: bool) -> str:
    loader._window_crop = windows
    digest = hashlib.sha256()
    for epoch, first in ((0, 0), (1, 0), (1, 2)):
        loader.set_epoch(epoch)
        loader.start_at(first)
        for x, y in loader:
            digest.update(x.contiguous().numpy().tobytes())
            digest.update(y.numpy().tobytes())
    return digest.hexdigest()[:16]


def _recorded_loader(arguments: dict) -> MemoryLoader:
    images = torch.randint(0, 256, (53, 3, 9, 7), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(11))
    labels = torch.randint(0, 4, (53,), generator=torch.Generator().manual_seed(12))
    return MemoryLoader(images, labels, **{"batch_size": 8, "train": True, "seed": 3,
                                           **arguments})


@pytest.mark.parametrize("name", sorted(RECORDED_BATCHES))
def test_batches_are_the_recorded_ones(name):
    arguments, windows, expected = RECORDED_BATCHES[name]
    assert _batches_digest(_recorded_loader(arguments), windows) == expected


def test_augmentation_settings_from_the_config_make_the_same_batches():
    # pipeline passes Augmentation.from_transforms(preset applied); callers may name its fields
    augment = Augmentation.from_transforms(apply_preset(TransformConfig(preset="cifar",
                                                                        cutout=3), 9))
    flat = dict(crop_padding=[4], hflip=0.5, cutout=3)
    assert augment == Augmentation(crop_padding=(4,), hflip=0.5, cutout=3)
    assert (_batches_digest(_recorded_loader(dict(augment=augment)), True)
            == _batches_digest(_recorded_loader(flat), True))
    with pytest.raises(TypeError, match="not both"):
        _recorded_loader(dict(augment=augment, hflip=0.5))


# --------------------------------------------------------------------------- augmentation semantics


def _offsets(outputs: list[torch.Tensor], image: torch.Tensor, padding: list[int]) -> set:
    """The crop offset (dy, dx) into the padded image each output is, asserting there is one."""
    left, top, right, bottom = padding_ltrb(padding)
    h, w = image.shape[1:]
    padded = torch.nn.functional.pad(image, (left, right, top, bottom))
    candidates = {
        (dy, dx): padded[:, dy : dy + h, dx : dx + w]
        for dy in range(top + bottom + 1)
        for dx in range(left + right + 1)
    }
    found = set()
    for out in outputs:
        hits = [k for k, c in candidates.items() if torch.equal(out, c)]
        assert hits, "content moved in a way RandomCrop cannot produce"
        found.add(hits[0])
    return found


def test_crop_offsets_match_torchvision_random_crop():
    padding = [0, 2, 3, 4]  # left, top, right, bottom
    image = _coordinate_coded(8)
    loader = MemoryLoader(image.expand(600, 3, 8, 8).contiguous(), torch.zeros(600), batch_size=600,
                          train=True, crop_padding=padding)
    ours = [(x * 255).round().to(torch.uint8) for x in next(iter(loader))[0]]
    crop = v2.RandomCrop(8, padding=padding)
    torch.manual_seed(0)
    theirs = [crop(image) for _ in range(400)]
    ours_found, theirs_found = _offsets(ours, image, padding), _offsets(theirs, image, padding)
    assert ours_found == theirs_found
    assert len(ours_found) == (2 + 4 + 1) * (0 + 3 + 1)


@pytest.mark.parametrize("padding", [[3], [1, 2]])
def test_crop_padding_short_forms(padding):
    image = _coordinate_coded(6)
    loader = MemoryLoader(image.expand(400, 3, 6, 6).contiguous(), torch.zeros(400),
                          batch_size=400, train=True, crop_padding=padding)
    ours = [(x * 255).round().to(torch.uint8) for x in next(iter(loader))[0]]
    left, top, right, bottom = padding_ltrb(padding)
    assert len(_offsets(ours, image, padding)) == (top + bottom + 1) * (left + right + 1)


def test_flip_probability_and_semantics():
    image = _coordinate_coded(8)
    n = 4000
    loader = MemoryLoader(image.expand(n, 3, 8, 8).contiguous(), torch.zeros(n), batch_size=n,
                          train=True, hflip=0.3)
    out = (next(iter(loader))[0] * 255).round().to(torch.uint8)
    same = (out == image).flatten(1).all(1)
    mirrored = (out == image.flip(-1)).flatten(1).all(1)
    assert bool((same ^ mirrored).all())
    assert abs(mirrored.float().mean().item() - 0.3) < 0.03


def test_alternate_flip_inverts_every_image_on_odd_epochs():
    image = _coordinate_coded(8)
    n = 200
    loader = MemoryLoader(image.expand(n, 3, 8, 8).contiguous(), torch.arange(n), batch_size=32,
                          train=True, hflip=0.5, flip_mode="alternate", seed=3)
    flips = []
    for epoch in range(3):
        loader.set_epoch(epoch)
        x, y = _all_batches(loader)
        mirrored = ((x * 255).round().to(torch.uint8) == image.flip(-1)).flatten(1).all(1)
        flips.append(mirrored[torch.argsort(y)])
    assert bool((flips[0] ^ flips[1]).all())
    assert torch.equal(flips[0], flips[2])
    assert 0.35 < flips[0].float().mean().item() < 0.65


def test_crop_and_flip_together_match_torchvision():
    # Asymmetric padding: a mirrored crop needs the right border on the left (the chunk buffer
    # pads both sides by max(left, right)); every (offset, flip) torchvision makes, and no other.
    padding = [0, 2, 3, 4]
    image = _coordinate_coded(8)
    n = 1500
    loader = MemoryLoader(image.expand(n, 3, 8, 8).contiguous(), torch.zeros(n), batch_size=n,
                          train=True, crop_padding=padding, hflip=0.5, chunk_size=100)
    ours = [(x * 255).round().to(torch.uint8) for x in next(iter(loader))[0]]
    crop_flip = v2.Compose([v2.RandomCrop(8, padding=padding), v2.RandomHorizontalFlip()])
    torch.manual_seed(0)
    theirs = [crop_flip(image) for _ in range(1500)]

    def found(outputs: list[torch.Tensor]) -> set:
        kinds = set()
        for out in outputs:
            plain = _offsets([out], image, padding) if _is_crop(out, image, padding) else None
            mirrored = (_offsets([out.flip(-1)], image, padding)
                        if _is_crop(out.flip(-1), image, padding) else None)
            assert plain or mirrored, "neither a crop nor a mirrored crop"
            kinds |= {(k, False) for k in plain or ()} | {(k, True) for k in mirrored or ()}
        return kinds

    assert found(ours) == found(theirs)
    assert len(found(ours)) == 2 * (2 + 4 + 1) * (0 + 3 + 1)


def _is_crop(out: torch.Tensor, image: torch.Tensor, padding: list[int]) -> bool:
    left, top, right, bottom = padding_ltrb(padding)
    h, w = image.shape[1:]
    padded = torch.nn.functional.pad(image, (left, right, top, bottom))
    return any(torch.equal(out, padded[:, dy : dy + h, dx : dx + w])
               for dy in range(top + bottom + 1) for dx in range(left + right + 1))


@pytest.mark.parametrize("mode", ["reflect", "edge"])
@pytest.mark.parametrize("windows", [True, False])
def test_reflect_and_edge_crops_are_exactly_the_drawn_crop_then_flip(mode, windows):
    # As test_batches_are_exactly_the_drawn_crop_then_flip, with torchvision's padding_mode:
    # asymmetric padding, so the window path's mirrored slots must take the other border.
    images = torch.randint(1, 256, (30, 3, 6, 5), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(4))
    padding = [3, 1, 0, 2]
    loader = MemoryLoader(images, torch.arange(30), batch_size=7, train=True, seed=2,
                          crop_padding=padding, crop_padding_mode=mode, hflip=0.5, chunk_size=14)
    loader._window_crop = windows
    x, y = _all_batches(loader)
    draws = loader._draw(30)
    for i, label in enumerate(y.tolist()):
        padded = v2.functional.pad(images[label], padding, padding_mode=mode)
        dy, dx = int(draws["dy"][i]), int(draws["dx"][i])
        expected = padded[:, dy : dy + 6, dx : dx + 5]
        if draws["flip"][i]:
            expected = expected.flip(-1)
        assert torch.equal((x[i] * 255).round().to(torch.uint8), expected), i
    assert (x == 0).sum() == 0  # no zero border anywhere
    cropped = batch_crop(images, padding_ltrb(padding), torch.Generator().manual_seed(0), mode)
    assert cropped.shape == images.shape and int((cropped == 0).sum()) == 0


def test_reflect_padding_must_be_smaller_than_the_image():
    with pytest.raises(ValueError, match="reflect"):
        MemoryLoader(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.arange(2), batch_size=2,
                     train=True, crop_padding=[4], crop_padding_mode="reflect")
    with pytest.raises(ValueError, match="crop_padding_mode"):
        MemoryLoader(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.arange(2), batch_size=2,
                     train=True, crop_padding=[1], crop_padding_mode="wrap")


def test_cutout_zeroes_one_square_per_image():
    k = 3
    images = torch.full((50, 3, 10, 10), 255, dtype=torch.uint8)
    loader = MemoryLoader(images, torch.zeros(50), batch_size=50, train=True, cutout=k)
    x = next(iter(loader))[0]
    corners = set()
    for image in x:
        zero = image == 0
        assert torch.equal(zero[0], zero[1]) and torch.equal(zero[0], zero[2])
        ys, xs = torch.nonzero(zero[0], as_tuple=True)
        assert len(ys) == k * k
        assert int(ys.max() - ys.min()) == k - 1 and int(xs.max() - xs.min()) == k - 1
        corners.add((int(ys.min()), int(xs.min())))
    assert len(corners) > 10  # positions vary per sample


def test_normalisation_equals_build_transform_eval_output():
    # Every uint8 value in every channel. ToDtype + Normalize are fused into one multiply-add:
    # equal up to float32 rounding; without normalisation, bit for bit.
    images = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(12, 3, 16, 16)
    images = images.contiguous()
    for mean_std in (CIFAR_STATS, ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]), None):
        transform = build_transform(TransformConfig(preset="none"), train=False, image_size=16,
                                    native_size=16, mean_std=mean_std)
        expected = torch.stack([transform(im) for im in images])
        loader = MemoryLoader(images, torch.arange(12), batch_size=5, train=False,
                              mean_std=mean_std)
        x = _all_batches(loader)[0]
        assert torch.equal(loader.normalize(images), x)  # the public form, no augmentation
        if mean_std is None:
            assert torch.equal(x, expected)
        else:
            assert torch.allclose(x, expected, rtol=0, atol=1e-6), (x - expected).abs().max()


def test_decoded_folder_equals_the_dataloader_path(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "imgs", per_class=6)  # mixed sizes, formats and modes
    samples, classes = scan_folder(root)
    dataset = ImageFileDataset(samples, classes, root=str(root))
    images, labels = decode_to_tensor(dataset, 16)
    assert images.shape == (12, 3, 16, 16) and images.dtype == torch.uint8
    assert labels.tolist() == [y for _, y in samples]
    transform = build_transform(TransformConfig(preset="none"), train=False, image_size=16,
                                mean_std=CIFAR_STATS)
    expected_x, expected_y = _all_batches(
        EpochLoader(TransformedDataset(dataset, transform), LoaderConfig(batch_size=4),
                    train=False)
    )
    memory = MemoryLoader(images, labels, batch_size=4, train=False, mean_std=CIFAR_STATS)
    x, y = _all_batches(memory)
    assert torch.equal(y, expected_y)
    assert torch.allclose(x, expected_x, rtol=0, atol=1e-6)  # fused normalisation: rounding


def test_augmented_statistics_agree_with_the_dataloader_path():
    # A horizontal ramp (bright left) per channel: column means reflect crop shifts and flips.
    n, size = 64, 16
    ramp = torch.linspace(250, 20, size).view(1, 1, size).expand(3, size, size)
    scale = torch.tensor([1.0, 0.7, 0.4]).view(3, 1, 1)
    noise = torch.randint(0, 10, (n, 3, size, size), generator=torch.Generator().manual_seed(0))
    images = (ramp * scale + noise).to(torch.uint8)
    cfg = TransformConfig(preset="cifar")  # random_crop, crop_padding [4], hflip 0.5
    transform = build_transform(cfg, train=True, image_size=size, native_size=size)
    reference = EpochLoader(
        TransformedDataset(list(zip(images, [0] * n, strict=True)), transform),
        LoaderConfig(batch_size=32), train=True,
    )
    memory = MemoryLoader(images, torch.zeros(n), batch_size=32, train=True, crop_padding=[4],
                          hflip=0.5)

    def stats(loader) -> tuple[torch.Tensor, torch.Tensor]:
        xs = []
        for epoch in range(30):
            loader.set_epoch(epoch)
            xs.append(_all_batches(loader)[0])
        x = torch.cat(xs)
        # per-channel mean; fraction of images brighter on the right (flipped)
        flipped = x[..., size // 2 :].mean((1, 2, 3)) > x[..., : size // 2].mean((1, 2, 3))
        return x.mean((0, 2, 3)), flipped.float().mean()

    torch.manual_seed(0)
    ref_mean, ref_flipped = stats(reference)
    mem_mean, mem_flipped = stats(memory)
    assert torch.allclose(mem_mean, ref_mean, atol=0.01), (mem_mean, ref_mean)
    assert abs(mem_flipped - 0.5) < 0.05 and abs(mem_flipped - ref_flipped) < 0.06


# --------------------------------------------------------------------------- sharding


@pytest.mark.parametrize("n,drop_last", [(12, False), (10, False), (10, True)])
def test_training_shards_match_distributed_sampler(n, drop_last):
    images, labels = _label_coded(n)
    shares = []
    for rank in range(3):
        loader = MemoryLoader(images, labels, batch_size=2, train=True, seed=4,
                              drop_last=drop_last, num_replicas=3, rank=rank)
        loader.set_epoch(1)
        sampler = DistributedSampler(range(n), num_replicas=3, rank=rank, seed=4 * 1_000_003,
                                     drop_last=drop_last)
        sampler.set_epoch(1)
        assert loader.indices().tolist() == list(sampler)
        shares.append(loader.indices().tolist())
    assert len({len(s) for s in shares}) == 1
    everything = [i for s in shares for i in s]
    if n % 3 == 0:
        assert sorted(everything) == list(range(n))  # disjoint and complete
    elif not drop_last:
        assert set(everything) == set(range(n))


def test_eval_shards_are_disjoint_and_complete_without_repeats():
    images, labels = _label_coded(10)
    seen = []
    for rank in range(3):
        loader = MemoryLoader(images, labels, batch_size=3, train=False, num_replicas=3,
                              rank=rank)
        seen += _all_batches(loader)[1].tolist()
    assert sorted(seen) == list(range(10))


# --------------------------------------------------------------------------- decode cache


class _CountingFolder(ImageFileDataset):
    reads = 0

    def __getitem__(self, index: int):
        type(self).reads += 1
        return super().__getitem__(index)


def test_cache_hit_miss_and_rebuild(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "imgs", per_class=4, size=12)
    samples, classes = scan_folder(root)
    dataset = _CountingFolder(samples, classes, root=str(root))
    cache = tmp_path / "cache"
    first = decode_to_tensor(dataset, 12, cache_dir=cache)
    assert _CountingFolder.reads == 8
    files = list(cache.glob("*.pt"))
    assert len(files) == 1 and not list(cache.glob("*.tmp"))
    second = decode_to_tensor(dataset, 12, cache_dir=cache)
    assert _CountingFolder.reads == 8  # hit: nothing decoded
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    # another size is another cache entry
    decode_to_tensor(dataset, 10, cache_dir=cache)
    assert _CountingFolder.reads == 16 and len(list(cache.glob("*.pt"))) == 2
    # a changed source file rebuilds the entry (in place)
    path = Path(samples[0][0])
    Image.new("RGB", (12, 12), (255, 0, 0)).save(path, format=Image.open(path).format)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    third = decode_to_tensor(dataset, 12, cache_dir=cache)
    assert _CountingFolder.reads == 24 and len(list(cache.glob("*.pt"))) == 2
    assert not torch.equal(third[0][0], first[0][0])
    assert torch.equal(third[0][1:], first[0][1:])


def test_cache_for_cifar_arrays(tmp_path, make_cifar_batches):
    folder = make_cifar_batches(tmp_path, n_train=20, n_test=10)
    base = load_cifar("cifar10", folder.parent, True, False, folder.name)
    cache = tmp_path / "cache"
    images, labels = decode_to_tensor(base, 32, cache_dir=cache)
    assert torch.equal(images, torch.from_numpy(base.data).permute(0, 3, 1, 2))
    assert labels.tolist() == list(base.targets)
    stamp = next(cache.glob("*.pt")).stat().st_mtime_ns
    decode_to_tensor(base, 32, cache_dir=cache)
    assert next(cache.glob("*.pt")).stat().st_mtime_ns == stamp  # hit
    base.data[0] = 255 - base.data[0]
    rebuilt, _ = decode_to_tensor(base, 32, cache_dir=cache)
    assert torch.equal(rebuilt[0], torch.from_numpy(base.data[0]).permute(2, 0, 1))


def test_uncacheable_dataset_is_decoded_directly(tmp_path):
    items = [(Image.fromarray(np.full((5, 7, 3), i, np.uint8)), i) for i in range(3)]
    images, labels = decode_to_tensor(items, 4, cache_dir=tmp_path / "cache")
    assert images.shape == (3, 3, 4, 4) and labels.tolist() == [0, 1, 2]
    assert not (tmp_path / "cache").exists()
    with pytest.raises(ImgclsError, match="uint8"):
        decode_to_tensor([(torch.rand(3, 4, 4), 0)], 4)


# --------------------------------------------------------------------------- wiring: data.loader


def _train_cfg(tmp_path: Path, source: Path, **overrides: object):
    values = {
        "model.name": "lenet", "loader.batch_size": 16, "optim.lr": 0.02,
        "sched.warmup_epochs": 0.0, "log.progress": "off", "log.tensorboard": False,
        "data.source": str(source), "data.root": str(tmp_path / "root"),
        "log.output": str(tmp_path / "runs"), "data.loader": "memory",
    }
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    return build_config(overrides=values)


def test_config_keys_are_validated():
    with pytest.raises(ImgclsError, match="data.loader"):
        build_config(overrides={"data.loader": "fast"})
    with pytest.raises(ImgclsError, match="data.memory_budget_mb"):
        build_config(overrides={"data.memory_budget_mb": -1})
    assert build_config().data.loader == "auto"


def test_memory_loader_refuses_transforms_it_cannot_do(tmp_path, make_image_folder):
    data = make_image_folder(tmp_path / "imgs", per_class=4, size=32)
    with pytest.raises(ImgclsError, match="transforms.rotation"):
        api.train(_train_cfg(tmp_path, data, transforms__rotation=10.0, train__epochs=1))
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("budget,expected", [(2048, True), (0, False)])
def test_auto_picks_memory_when_it_fits(tmp_path, make_image_folder, capsys, budget, expected):
    data = make_image_folder(tmp_path / "imgs", per_class=4, size=32)
    memory = "decoded into device memory"
    api.train(_train_cfg(tmp_path, data, data__loader="auto", data__memory_budget_mb=budget,
                         train__epochs=1))
    assert (memory in capsys.readouterr().err) == expected
    api.train(_train_cfg(tmp_path, data, data__loader="auto", transforms__rotation=5.0,
                         train__epochs=1))
    assert "read by a DataLoader" in capsys.readouterr().err  # transforms it cannot do


def test_memory_training_resumes_exactly(tmp_path, make_image_folder):
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=20, size=32)
    common = dict(train__epochs=3, train__deterministic=True, model__name="simple_v3")
    whole = api.train(_train_cfg(tmp_path, data, log__name="whole", **common))
    assert list((tmp_path / "root" / ".imgcls-cache").glob("*.pt"))  # train and val, cached
    resumed = interrupt_and_resume(_train_cfg(tmp_path, data, log__name="split", **common), 1)
    assert_same_weights(whole.run_dir, resumed.run_dir)
    assert resumed.best_metric == whole.best_metric


def test_drop_last_keeps_a_lone_partial_batch():
    cfg = build_config(overrides={"loader.batch_size": 8, "loader.drop_last": True})
    assert keep_a_lone_partial_batch(cfg, 20, world_size=1).loader.drop_last  # 2 full, 4 dropped
    assert not keep_a_lone_partial_batch(cfg, 7, world_size=1).loader.drop_last  # the only batch
    assert not keep_a_lone_partial_batch(cfg, 20, world_size=3).loader.drop_last  # 6 per rank
    assert keep_a_lone_partial_batch(cfg, 20, world_size=1) is cfg


@pytest.mark.parametrize("loader", ["memory", "dataloader"])
def test_a_batch_larger_than_the_data_still_trains_with_drop_last(tmp_path, make_image_folder,
                                                                  loader):
    # fast.yaml (batch 1024, drop_last) on a folder of a dozen images: one batch per epoch.
    data = make_image_folder(tmp_path / "imgs", per_class=4, size=32)
    result = api.train(_train_cfg(tmp_path, data, data__loader=loader, loader__batch_size=1024,
                                  loader__drop_last=True, train__epochs=1))
    assert result.epochs == 1 and (result.run_dir / "checkpoints" / "last.pt").is_file()
