"""fastnet: shapes, the frozen parts, the whitening initialisation, and a run through api.train."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from imgcls import api
from imgcls.config import ModelConfig, build_config, load_yaml
from imgcls.models import count_parameters, create_model
from imgcls.models.fast_nets import FastNet, FrozenScaleBatchNorm
from imgcls.runs.checkpoint import load_checkpoint


def _conv(cin: int, cout: int) -> int:
    return cin * cout * 9


@pytest.mark.parametrize(("name", "widths"), [("fastnet", (64, 256, 256)),
                                              ("fastnet_s", (32, 128, 128))])
def test_parameter_count_by_hand(name: str, widths: tuple[int, int, int]) -> None:
    a, b, c = widths
    whiten = 24 * 3 * 4 + 24
    convs = _conv(24, a) + _conv(a, a) + _conv(a, b) + _conv(b, b) + _conv(b, c) + _conv(c, c)
    norms = 2 * 2 * (a + b + c)  # weight (frozen) and bias of every BatchNorm
    head = c * 10
    assert count_parameters(name, 10) == whiten + convs + norms + head


@pytest.mark.parametrize("size", [32, 40, 16])
def test_output_shapes_at_several_sizes(size: int) -> None:
    model = create_model(ModelConfig(name="fastnet_s"), 7)
    out = model(torch.randn(3, 3, size, size))
    assert out.shape == (3, 7)
    out.sum().backward()


def test_frozen_parts_and_scaled_output() -> None:
    model = FastNet(10, widths=(16, 32, 32))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "whiten.weight" in frozen and "whiten.bias" not in frozen
    norms = [m for m in model.modules() if isinstance(m, FrozenScaleBatchNorm)]
    assert len(norms) == 6 and all(not m.weight.requires_grad and m.bias.requires_grad
                                   for m in norms)
    assert not any(isinstance(m, nn.Linear) and m.bias is not None for m in model.modules())
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    features = torch.flatten(model.pool(model.layer3(model.layer2(model.layer1(
        model.act(model.whiten(x)))))), 1)
    torch.testing.assert_close(model(x), model.head(features) / 9)


def test_whitening_from_data_decorrelates_patches() -> None:
    torch.manual_seed(0)
    # Strongly correlated channels and neighbouring pixels, like natural images.
    base = torch.randn(200, 1, 17, 17).repeat(1, 3, 1, 1) + 0.3 * torch.randn(200, 3, 17, 17)
    images = (base[..., 1:, 1:] + base[..., :-1, :-1]) / 2
    model = FastNet(10, widths=(8, 8, 8))
    model.init_from_data(images)
    half = model.whiten.weight.shape[0] // 2
    torch.testing.assert_close(model.whiten.weight[half:], -model.whiten.weight[:half])
    out = nn.functional.conv2d(images, model.whiten.weight[:half])  # no bias
    flat = out.permute(0, 2, 3, 1).reshape(-1, half)
    cov = torch.cov(flat.T)
    # unit variance in every direction (up to the eps added to small eigenvalues)
    torch.testing.assert_close(cov, torch.eye(half), atol=0.05, rtol=0.05)


def test_train_initialises_the_stem_from_data_and_reloads(tmp_path, make_image_folder) -> None:
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=12, size=32)
    cfg = build_config(load_yaml("configs/fast.yaml"), {
        "model.name": "fastnet_s", "data.source": str(data), "loader.batch_size": 8,
        "train.epochs": 2, "sched.warmup_epochs": 0.5, "log.output": str(tmp_path / "runs"),
        "log.progress": "off", "log.tensorboard": False, "optim.lr": 0.2,
    })
    result = api.train(cfg)
    ckpt = load_checkpoint(result.run_dir / "checkpoints" / "last.pt")
    weight = ckpt["model"]["whiten.weight"]
    fresh = create_model(ModelConfig(name="fastnet_s"), 2).state_dict()["whiten.weight"]
    assert not torch.allclose(weight, fresh)  # set from the data, then frozen
    torch.testing.assert_close(weight[12:], -weight[:12])
    summary = api.evaluate_checkpoint(result.run_dir / "checkpoints" / "last.pt")
    assert summary["top1"] == pytest.approx(result.last_metrics["val_acc"], abs=1e-12)
