"""The photo loader's batch ops against the torchvision transforms they replace: the random
resized crop's boxes (scales, aspect ratios, the fallback), the resample, the colour ops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from imgcls.data import photo_ops

N = 20_000


def _torchvision_boxes(height: int, width: int, n: int) -> torch.Tensor:
    torch.manual_seed(0)
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    rrc = v2.RandomResizedCrop(16)
    params = [rrc.make_params([image]) for _ in range(n)]
    return torch.tensor([[p["top"], p["left"], p["height"], p["width"]] for p in params])


def _ours(height: int, width: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return photo_ops.draw_resized_crops(torch.full((n,), height), torch.full((n,), width), g)


def _quantiles(values: torch.Tensor) -> torch.Tensor:
    return torch.quantile(values.double(), torch.linspace(0.05, 0.95, 19, dtype=torch.float64))


@pytest.mark.parametrize("height,width", [(146, 195), (195, 146), (146, 146), (30, 300)])
def test_crop_scales_and_aspect_ratios_match_random_resized_crop(height, width):
    ours, theirs = _ours(height, width, N), _torchvision_boxes(height, width, N)
    for boxes in (ours, theirs):
        top, left, h, w = boxes.unbind(1)
        assert (top >= 0).all() and (left >= 0).all()
        assert (top + h <= height).all() and (left + w <= width).all() and (h > 0).all()
    area = height * width
    for stat in (lambda b: b[:, 2] * b[:, 3] / area, lambda b: torch.log(b[:, 3] / b[:, 2])):
        a, b = _quantiles(stat(ours)), _quantiles(stat(theirs))
        assert torch.allclose(a, b, atol=0.02), (a, b)
    # where the crop sits: its centre spreads the same way
    centre = lambda b: (b[:, 1] + b[:, 3] / 2) / width  # noqa: E731
    assert torch.allclose(_quantiles(centre(ours)), _quantiles(centre(theirs)), atol=0.02)


def test_an_image_too_thin_for_any_try_gets_the_clamped_central_crop():
    # 10 x 400: no box of ratio 3/4..4/3 and scale >= 8% fits; torchvision's fallback
    boxes = _ours(10, 400, 100)
    expected = _torchvision_boxes(10, 400, 1)[0]
    assert expected.tolist() == [0, 193, 10, 13]  # the whole height, cut to ratio 4/3, centred
    assert (boxes == expected).all()


def _upsample(crop: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    x = torch.from_numpy(crop).permute(2, 0, 1)[None].float()
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)[0]


def test_resample_is_bilinear_and_never_reads_past_a_crop():
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
             for h, w in [(7, 9), (16, 5), (12, 12), (3, 4)]]
    out = photo_ops.resample_crops(crops, (16, 16), torch.device("cpu"))
    assert out.shape == (4, 3, 16, 16)
    for k, crop in enumerate(crops):  # upsampling: exactly F.interpolate's bilinear
        torch.testing.assert_close(out[k], _upsample(crop, (16, 16)), atol=1e-3, rtol=0)


def test_shrinking_resample_is_close_to_an_antialiased_resize():
    rng = np.random.default_rng(1)
    smooth = F.interpolate(torch.from_numpy(rng.random((1, 3, 8, 8))).float() * 255,
                           size=(40, 52), mode="bicubic").clamp(0, 255)
    crop = smooth[0].permute(1, 2, 0).round().to(torch.uint8).numpy()
    out = photo_ops.resample_crops([crop], (24, 24), torch.device("cpu"))[0]
    ref = v2.functional.resize(torch.from_numpy(crop).permute(2, 0, 1), [24, 24],
                               antialias=True).float()
    assert (out - ref).abs().mean() < 1.5


@pytest.mark.parametrize("op,fn", [(0, v2.functional.adjust_brightness),
                                   (1, v2.functional.adjust_contrast),
                                   (2, v2.functional.adjust_saturation),
                                   (3, v2.functional.adjust_hue)])
def test_each_colour_op_is_torchvisions_per_image(op, fn):
    g = torch.Generator().manual_seed(op)
    images = torch.rand(6, 3, 9, 11, generator=g)
    factors = (torch.rand(6, generator=g) - 0.5) if op == 3 else torch.rand(6, generator=g) * 2
    ours = photo_ops.COLOR_OPS[op](images * 255, factors) / 255
    for k in range(6):
        torch.testing.assert_close(ours[k], fn(images[k], float(factors[k])), atol=2e-5,
                                   rtol=1e-4)


def test_colour_jitter_draws_factors_in_range_and_a_fresh_order_per_image():
    g = torch.Generator().manual_seed(0)
    factors, order = photo_ops.draw_color_jitter(N, (0.4, 0.2, 1.5, 0.1), g)
    lows, highs = factors.min(0).values, factors.max(0).values
    assert torch.allclose(lows, torch.tensor([0.6, 0.8, 0.0, -0.1]), atol=1e-3)
    assert torch.allclose(highs, torch.tensor([1.4, 1.2, 2.5, 0.1]), atol=1e-3)
    assert (order.sort(1).values == torch.arange(4)).all()  # a permutation each
    first = torch.bincount(order[:, 0], minlength=4) / N
    assert torch.allclose(first, torch.full((4,), 0.25), atol=0.02)
    # 24 orders, about equally often
    codes = (order * torch.tensor([64, 16, 4, 1])).sum(1)
    assert len(codes.unique()) == 24


def test_jitter_applies_ops_in_each_images_order():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 5, 5, generator=g) * 255
    factors = torch.tensor([[1.5, 0.5, 1.0, 0.0]] * 2)
    order = torch.tensor([[0, 1, 2, 3], [1, 0, 2, 3]])
    out = photo_ops.apply_color_jitter(images.clone(), (0.5, 0.5, 0.0, 0.0), factors, order)
    b, c = photo_ops.COLOR_OPS[0], photo_ops.COLOR_OPS[1]
    torch.testing.assert_close(out[0], c(b(images[:1], factors[:1, 0]), factors[:1, 1])[0])
    torch.testing.assert_close(out[1], b(c(images[1:], factors[1:, 1]), factors[1:, 0])[0])
    assert not torch.allclose(out[0], out[1])  # brightness then contrast differs (clamping)


def test_grayscale_greys_exactly_the_picked_images():
    images = torch.rand(4, 3, 6, 6) * 255
    out = photo_ops.apply_grayscale(images.clone(), torch.tensor([True, False, True, False]))
    ref = v2.functional.rgb_to_grayscale(images[0] / 255, num_output_channels=3) * 255
    torch.testing.assert_close(out[0], ref, atol=1e-3, rtol=0)
    assert torch.equal(out[1], images[1]) and torch.equal(out[3], images[3])
    assert math.isclose(float((out[2, 0] - out[2, 1]).abs().max()), 0.0)
