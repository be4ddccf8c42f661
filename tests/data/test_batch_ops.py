"""The whole-batch augmentations (padding, crop, flip, cutout): their semantics, and their exact
outputs for fixed seeds (the loader's batches are made of them: test_memory_loader.py)."""

from __future__ import annotations

import hashlib

import torch
from test_memory_loader import _coordinate_coded, _offsets
from torchvision.transforms import v2

from imgcls.data.batch_ops import batch_crop, batch_cutout, batch_flip, pad_images, padding_ltrb

# What these seeded calls returned before the loader and these functions shared one
# implementation (sha256 of the output's bytes, 16 hex digits): a refactoring must keep every bit.
# Torch's CPU generator drew them; a torch release that changes randint may change them too.
RECORDED = {
    "crop constant (2, 2, 2, 2)": "925bc992b8c5d45e",
    "crop constant (3, 1, 0, 2)": "10ff9a8d062426d1",
    "crop reflect (2, 2, 2, 2)": "c6385c9db5534163",
    "crop reflect (3, 1, 0, 2)": "a4edee44887985fc",
    "crop edge (2, 2, 2, 2)": "937e0a124342be5a",
    "crop edge (3, 1, 0, 2)": "8d98d3393ddf35f0",
    "flip": "49242031bc383741",
    "cutout 3": "c058a249e2ac526f",
    "cutout 20": "798f27da6032ab6e",
}


def _digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()[:16]


def test_outputs_for_fixed_seeds_are_the_recorded_ones():
    images = torch.randint(0, 256, (40, 3, 9, 7), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(5))
    out = {}
    for mode in ("constant", "reflect", "edge"):
        for padding in ((2, 2, 2, 2), (3, 1, 0, 2)):
            out[f"crop {mode} {padding}"] = batch_crop(images, padding,
                                                       torch.Generator().manual_seed(1), mode)
    out["flip"] = batch_flip(images, torch.arange(40) % 3 == 0)
    for size in (3, 20):
        out[f"cutout {size}"] = batch_cutout(images.float(), size,
                                             torch.Generator().manual_seed(2))
    assert {name: _digest(x) for name, x in out.items()} == RECORDED


def test_pad_images_border_values():
    image = torch.arange(1, 13, dtype=torch.uint8).view(1, 1, 3, 4)  # rows 1-4, 5-8, 9-12
    reflect = pad_images(image, (2, 1, 1, 0), "reflect")[0, 0]
    assert reflect.shape == (4, 7)
    # reflect mirrors about the edge pixel without repeating it: row -1 is row 1, column -2 is 2
    assert reflect[0].tolist() == [7, 6, 5, 6, 7, 8, 7]
    assert reflect[1].tolist() == [3, 2, 1, 2, 3, 4, 3]
    edge = pad_images(image, (2, 1, 1, 0), "edge")[0, 0]
    assert edge[0].tolist() == [1, 1, 1, 2, 3, 4, 4] and edge[-1].tolist() == [9, 9, 9, 10, 11,
                                                                                 12, 12]
    assert pad_images(image, (1, 1, 1, 1))[0, 0, 0].tolist() == [0] * 6
    for mode in ("reflect", "edge"):  # the same pixels as torchvision's pad of one image
        ours = pad_images(image, (2, 1, 1, 0), mode)
        assert torch.equal(ours[0], v2.functional.pad(image[0], [2, 1, 1, 0], padding_mode=mode))


def test_public_batch_functions():
    image = _coordinate_coded(8)
    batch = image.expand(300, 3, 8, 8).contiguous()
    padding = padding_ltrb([0, 2, 3, 4])
    cropped = batch_crop(batch, padding, torch.Generator().manual_seed(1))
    again = batch_crop(batch, padding, torch.Generator().manual_seed(1))
    assert torch.equal(cropped, again) and cropped.shape == batch.shape
    assert len(_offsets(list(cropped), image, [0, 2, 3, 4])) == (2 + 4 + 1) * (0 + 3 + 1)
    assert batch_crop(batch, (0, 0, 0, 0), torch.Generator()) is batch
    flip = torch.arange(300) % 3 == 0
    flipped = batch_flip(batch, flip)
    assert torch.equal(flipped[flip], batch[flip].flip(-1))
    assert torch.equal(flipped[~flip], batch[~flip])
    cut = batch_cutout(torch.ones(20, 3, 8, 8), 3, torch.Generator().manual_seed(0))
    assert ((cut == 0).flatten(1).sum(1) == 3 * 3 * 3).all()
