"""The asymmetric loss: BCE at gammas 0 and clip 0, a value worked by hand, the down-weighting
of easy negatives, finite values at extreme logits and under bf16 autocast; BCE's pos_weight."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from imgcls.config import OptimConfig
from imgcls.losses import AsymmetricLoss, create_loss, positive_weights


def _batch(seed: int = 0, n: int = 8, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(n, k, generator=g), (torch.rand(n, k, generator=g) < 0.3).float()


@pytest.mark.parametrize("with_pos_weight", [False, True])
@pytest.mark.parametrize("soft", [False, True])
def test_equals_bce_without_focusing_or_clipping(with_pos_weight, soft):
    logits, targets = _batch()
    if soft:  # MixUp-style soft targets
        targets = 0.7 * targets + 0.3 * targets.flip(0)
    pos_weight = torch.tensor([1.0, 2.0, 0.5, 10.0, 3.0]) if with_pos_weight else None
    asl = AsymmetricLoss(gamma_neg=0, gamma_pos=0, clip=0, pos_weight=pos_weight)
    bce = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    loss_a, loss_b = asl(a, targets), bce(b, targets)
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-6)
    loss_a.backward()
    loss_b.backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)


def test_hand_computed_value():
    # gamma_neg=4, gamma_pos=1, clip=0.05; logits 0 and ln 3 give p = 1/2 and 3/4.
    logits = torch.tensor([[0.0, math.log(3)], [math.log(3), 0.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # positives (p = 1/2 twice): (1 - p)^1 * log p = 0.5 * log 0.5 each
    # negatives: p = 3/4 -> p_m = 0.7: 0.7^4 * log 0.3, for both
    expected = -(2 * 0.5 * math.log(0.5) + 2 * 0.7**4 * math.log(0.3)) / 4
    loss = AsymmetricLoss(gamma_neg=4, gamma_pos=1, clip=0.05)(logits, targets)
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_pos_weight_scales_only_the_positive_term():
    logits = torch.tensor([[0.3, -1.0]])
    targets = torch.tensor([[1.0, 0.0]])
    plain = AsymmetricLoss()(logits, targets)
    weighted = AsymmetricLoss(pos_weight=torch.tensor([3.0, 7.0]))(logits, targets)
    pos_only = AsymmetricLoss()(logits[:, :1], targets[:, :1]) / 2  # the mean is over 2 elements
    assert float(weighted) == pytest.approx(float(plain) + 2 * float(pos_only), rel=1e-6)


def test_easy_negatives_are_down_weighted_relative_to_bce():
    targets = torch.zeros(1, 3)
    easy, hard = torch.tensor([[-3.0, -2.0, -1.5]]), torch.tensor([[2.0, 1.0, 3.0]])
    asl, bce = AsymmetricLoss(), nn.BCEWithLogitsLoss()
    ratio_easy = float(asl(easy, targets) / bce(easy, targets))
    ratio_hard = float(asl(hard, targets) / bce(hard, targets))
    assert ratio_easy < 0.01 < ratio_hard < 1
    # Below p = clip a negative costs nothing at all.
    assert float(asl(torch.tensor([[-4.0]]), torch.zeros(1, 1))) == 0.0
    # Positives keep BCE's loss at gamma_pos = 0.
    logits, ones = torch.tensor([[-1.0, 0.5]]), torch.ones(1, 2)
    torch.testing.assert_close(asl(logits, ones), bce(logits, ones))


@pytest.mark.parametrize("gammas", [(4.0, 0.0), (4.0, 1.0), (0.5, 0.5), (0.0, 0.0)])
@pytest.mark.parametrize("clip", [0.0, 0.05])
def test_finite_at_extreme_logits(gammas, clip):
    logits = torch.tensor([[50.0, -50.0, 50.0, -50.0, 0.0, 200.0, -200.0]], requires_grad=True)
    targets = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.5, 1.0, 0.0]])
    loss = AsymmetricLoss(*gammas, clip=clip)(logits, targets)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_float32_under_bf16_autocast():
    logits, targets = _batch(1)
    layer = nn.Linear(5, 5)
    asl = AsymmetricLoss(pos_weight=torch.full((5,), 2.0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(logits)
        assert out.dtype == torch.bfloat16
        loss = asl(out, targets)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(layer.weight.grad).all()
    torch.testing.assert_close(loss, asl(out.float(), targets))


def test_gradients_flow_through_the_focusing_weights():
    # d/dx of -p^4 log(1 - p) at a negative differs from the weight held constant.
    x = torch.tensor([[0.5]], requires_grad=True)
    AsymmetricLoss(gamma_neg=4, clip=0)(x, torch.zeros(1, 1)).backward()
    p = torch.sigmoid(torch.tensor(0.5)).item()
    full = -(4 * p**3 * math.log(1 - p) - p**4 / (1 - p)) * p * (1 - p)
    assert float(x.grad) == pytest.approx(full, rel=1e-5)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError):
        AsymmetricLoss(gamma_neg=-1)
    with pytest.raises(ValueError):
        AsymmetricLoss(clip=1.0)


def test_positive_weights():
    assert positive_weights([10, 1, 0, 50], total=100) == pytest.approx([9.0, 99.0, 100.0, 1.0])
    assert positive_weights([10, 1, 0], total=100, cap=50.0) == [9.0, 50.0, 50.0]
    assert positive_weights([100], total=100) == [0.0]
    assert all(type(w) is float for w in positive_weights([3, 0], total=9, cap=5))
    with pytest.raises(ValueError):
        positive_weights([5], total=4)


@pytest.mark.parametrize("loss", ["bce", "asl"])
def test_training_loss_sums_over_classes_and_averages_over_images(loss):
    logits, targets = _batch(2, n=6, k=7)
    cfg = OptimConfig(loss=loss, asl_gamma_neg=0.0, asl_clip=0.0)
    x = logits.clone().requires_grad_()
    value = create_loss(cfg, multilabel=True)(x, targets.to(torch.uint8))
    expected = nn.BCEWithLogitsLoss(reduction="sum")(logits, targets) / 6
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
    value.backward()
    # Each logit's gradient is (sigmoid - y) / images, cross-entropy's scale, not 1/K of it.
    torch.testing.assert_close(x.grad, (torch.sigmoid(logits) - targets) / 6)


def test_bce_on_class_indices_is_one_hot():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -2.0]])
    loss = create_loss(OptimConfig(loss="bce"))(logits, torch.tensor([0, 2]))
    one_hot = torch.tensor([[1.0, 0, 0], [0, 0, 1]])
    assert float(loss) == pytest.approx(
        float(nn.BCEWithLogitsLoss(reduction="sum")(logits, one_hot)) / 2, rel=1e-6)


def test_reductions():
    logits, targets = _batch(3)
    per_element = AsymmetricLoss(reduction="none")(logits, targets)
    assert per_element.shape == logits.shape
    torch.testing.assert_close(AsymmetricLoss(reduction="sum")(logits, targets),
                               per_element.sum())
    torch.testing.assert_close(AsymmetricLoss()(logits, targets), per_element.mean())
    with pytest.raises(ValueError):
        AsymmetricLoss(reduction="batchmean")
