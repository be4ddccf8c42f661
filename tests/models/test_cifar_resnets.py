"""CIFAR-native ResNets (He et al. 2016, option A) and WRN-16-8 (Zagoruyko & Komodakis 2016):
shapes, the papers' parameter counts, shortcuts, init, fine-tuning options, recipes, one tiny
training run. CPU, small batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from imgcls import api
from imgcls.config import ModelConfig, build_config, load_yaml
from imgcls.models import (
    MODELS,
    backbone_stages,
    count_parameters,
    create_model,
    find_head,
    get_model_info,
    list_models,
    set_train_mode,
)
from imgcls.models.cifar_resnets import CifarResNet, ShortcutA, WideResNet

NAMES = ["resnet20", "resnet56", "wrn16_8"]
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {name: create_model(ModelConfig(name=name), 10) for name in NAMES}


# --------------------------------------------------------------------------- registry, shapes


def test_registered_with_cifar_metadata() -> None:
    assert set(NAMES) <= set(MODELS.names())
    listed = [i.name for i in list_models(include_torchvision=False)]
    assert set(NAMES) <= set(listed)
    assert listed[:3] == ["lenet", "cifar10_net", "simple_v3"]  # the seeds stay first
    for name in NAMES:
        info = get_model_info(name)
        assert (info.source, info.input_size, info.default_normalize, info.fixed_size,
                info.min_size) == ("imgcls", 32, "dataset", False, 1)


@pytest.mark.parametrize("size", [32, 40, 17])
@pytest.mark.parametrize("name", NAMES)
def test_output_shapes(models: dict[str, nn.Module], name: str, size: int) -> None:
    model = models[name].eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 10)


def test_structure() -> None:
    r20, r56 = CifarResNet(3), CifarResNet(9)
    for model, n in ((r20, 3), (r56, 9)):
        assert model.depth == 6 * n + 2
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert len(convs) + 1 == 6 * n + 2  # weighted layers: the convs and the fc
        assert all(c.kernel_size == (3, 3) for c in convs)
        assert [len(model.layer1), len(model.layer2), len(model.layer3)] == [n, n, n]
        assert [s[-1].conv2.out_channels for s in (model.layer1, model.layer2, model.layer3)] \
            == [16, 32, 64]
    wrn = WideResNet(16, 8)
    assert [len(wrn.layer1), len(wrn.layer2), len(wrn.layer3)] == [2, 2, 2]
    widths = [wrn.conv1.out_channels, *(g[0].conv2.out_channels
                                         for g in (wrn.layer1, wrn.layer2, wrn.layer3))]
    assert widths == [16, 128, 256, 512]
    # 1x1 conv shortcuts where the shape changes (every group's first block), identity elsewhere
    assert [b.shortcut is not None for g in (wrn.layer1, wrn.layer2, wrn.layer3) for b in g] \
        == [True, False] * 3
    assert all(b.shortcut.kernel_size == (1, 1) for g in (wrn.layer1, wrn.layer2, wrn.layer3)
               for b in g if b.shortcut is not None)


# --------------------------------------------------------------------------- parameter counts


def _resnet_hand_count(n: int, num_classes: int = 10, cin: int = 3) -> int:
    """6n+2 CIFAR ResNet with option A shortcuts: bias-free 3x3 convs + BN (2 per channel)."""
    count = 9 * cin * 16 + 2 * 16  # stem
    prev = 16
    for width in (16, 32, 64):
        for _ in range(n):
            count += 9 * prev * width + 9 * width * width + 4 * width
            prev = width
    return count + 64 * num_classes + num_classes


def test_resnet_parameter_counts() -> None:
    assert _resnet_hand_count(3) == 269_722
    assert _resnet_hand_count(9) == 853_018
    for name, n, exact, paper in (("resnet20", 3, 269_722, 0.27e6),
                                  ("resnet56", 9, 853_018, 0.85e6)):
        model = create_model(ModelConfig(name=name), 10)
        assert sum(p.numel() for p in model.parameters()) == exact
        assert count_parameters(name, 10) == exact  # on the meta device
        assert round(exact / 1e6, 2) == round(paper / 1e6, 2)  # the paper's 0.27M / 0.85M
        assert count_parameters(name, 100) == _resnet_hand_count(n, 100)
        assert count_parameters(name, 10, in_channels=1) == _resnet_hand_count(n, 10, 1)
    # The often-quoted 272,474 / 855,770 are the option B counts: a 1x1 conv + BN projection at
    # the two stage transitions (16->32, 32->64) adds 2,752 parameters.
    assert 269_722 + (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64) == 272_474
    assert 853_018 + 2_752 == 855_770


def test_wrn16_8_parameter_count() -> None:
    exact = count_parameters("wrn16_8", 10)
    assert exact == 10_961_370
    assert abs(exact - 11.0e6) / 11.0e6 < 0.01  # the paper's 11.0M


# --------------------------------------------------------------------------- shortcuts, init


def test_option_a_shortcut_is_parameter_free_identity_with_zero_padding(
    models: dict[str, nn.Module],
) -> None:
    for name in ("resnet20", "resnet56"):
        shortcuts = [m for m in models[name].modules() if isinstance(m, ShortcutA)]
        assert len(shortcuts) == 2  # the 16->32 and 32->64 transitions
        assert all(not list(s.parameters()) and not list(s.buffers()) for s in shortcuts)
        # no 1x1 convs: every conv is 3x3
        assert all(m.kernel_size == (3, 3) for m in models[name].modules()
                   if isinstance(m, nn.Conv2d))
    x = torch.randn(2, 16, 9, 9)
    y = ShortcutA(16, 32, 2)(x)
    assert y.shape == (2, 32, 5, 5)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, 16:]) == 0
    assert torch.equal(ShortcutA(16, 16, 1)(x), x)


def test_he_init(models: dict[str, nn.Module]) -> None:
    for name in ("resnet56", "wrn16_8"):
        for m in models[name].modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
                assert m.bias is None
                if m.weight.numel() >= 4096:  # enough samples for the std to be close
                    std = m.weight.std().item()
                    assert std == pytest.approx((2.0 / fan_out) ** 0.5, rel=0.1)
            elif isinstance(m, nn.BatchNorm2d):
                assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


@pytest.mark.parametrize("name", ["resnet20", "wrn16_8"])
def test_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(ModelConfig(name=name), 5)
    model.train()
    out = model(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 5) and torch.isfinite(out).all()
    nn.functional.cross_entropy(out, torch.arange(4) % 5).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# --------------------------------------------------------------------------- fine-tuning


@pytest.mark.parametrize("name", NAMES)
def test_freeze_backbone_leaves_only_the_head_trainable(name: str) -> None:
    model = create_model(ModelConfig(name=name, freeze="backbone"), 3)
    assert find_head(model)[0] == "fc"
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    set_train_mode(model)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)  # frozen BN keeps its statistics
    assert model.fc.training


def test_freeze_stages_and_append_head() -> None:
    r20 = create_model(ModelConfig(name="resnet20"), 3)
    assert [s.name for s in backbone_stages(r20)] == ["conv1..bn1", "layer1", "layer2", "layer3"]
    wrn = create_model(ModelConfig(name="wrn16_8"), 3)
    assert [s.name for s in backbone_stages(wrn)] == ["conv1", "layer1", "layer2", "layer3..bn"]
    # every parameter but the head's is in exactly one stage
    for model in (r20, wrn):
        staged = [p for s in backbone_stages(model) for p in s.params]
        assert sorted(staged) == sorted(n for n, _ in model.named_parameters()
                                        if not n.startswith("fc."))
    model = create_model(ModelConfig(name="resnet20", freeze="2"), 3)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "fc"}
    model = create_model(ModelConfig(name="resnet20", head="append", freeze="backbone"), 3)
    assert find_head(model)[0] == "fc.add_linear"
    assert model.fc.weight.shape == (10, 64)  # the kept CIFAR-10 layer
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "fc.add_linear.weight", "fc.add_linear.bias"]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


# --------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("name", NAMES)
def test_recipes(name: str) -> None:
    path = CONFIGS / f"{name}.yaml"
    assert "imgcls train --config configs/" + path.name in path.read_text()
    cfg = build_config(load_yaml(path))
    assert cfg.model.name == name and name in MODELS
    assert cfg.data.source == "cifar10" and cfg.data.loader == "auto"
    assert cfg.loader.batch_size == 128
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum) == ("sgd", 0.1, 0.9)
    assert cfg.sched.name == "multistep" and cfg.sched.warmup_epochs == 0
    assert cfg.transforms.preset == "cifar" and cfg.transforms.normalize == "dataset"
    if name == "wrn16_8":
        assert cfg.optim.nesterov is True and cfg.optim.weight_decay == 5e-4
        assert (cfg.sched.milestones, cfg.sched.gamma, cfg.train.epochs) == (
            [60, 120, 160], 0.2, 200)
    else:
        assert cfg.optim.nesterov is False and cfg.optim.weight_decay == 1e-4
        assert (cfg.sched.milestones, cfg.sched.gamma, cfg.train.epochs) == (
            [91, 136], 0.1, 182)


# --------------------------------------------------------------------------- training


def test_tiny_training_run(tmp_path: Path, make_image_folder, capfd) -> None:
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=8, size=32)
    cfg = build_config(load_yaml(CONFIGS / "resnet20.yaml"), {
        "data.source": str(data),
        "data.root": str(tmp_path / "data"),  # the memory loader's decode cache goes here
        "loader.batch_size": 8,
        "train.epochs": 1,
        "train.device": "cpu",
        "log.output": str(tmp_path / "runs"),
        "log.name": "r20",
        "log.tensorboard": False,
        "log.progress": "off",
    })
    result = api.train(cfg)
    assert "decoded into device memory" in capfd.readouterr().err  # auto picked it
    rows = [json.loads(line) for line in
            (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1]
    assert all(torch.isfinite(torch.tensor(rows[0][k])) for k in ("train_loss", "val_loss"))
    assert (result.run_dir / "checkpoints" / "last.pt").is_file()
