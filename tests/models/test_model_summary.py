"""`imgcls models NAME`: the layer tree with output shapes, parameters and FLOPs
(imgcls.models.summary), checked against the seeds' published counts and FlopCounterMode."""

from __future__ import annotations

import pytest
import torch
from conftest import run_cli
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from imgcls.config import ModelConfig
from imgcls.errors import ImgclsError
from imgcls.models import create_model
from imgcls.models.summary import format_summary, summarize

SEED_COUNTS = {"lenet": 62_006, "cifar10_net": 145_578, "simple_v3": 419_690}


def _model(name: str, **kw: object) -> nn.Module:
    torch.manual_seed(0)
    return create_model(ModelConfig(name=name, **kw), 10)  # type: ignore[arg-type]


def _flops(model: nn.Module, shape: tuple[int, ...]) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(shape))
    return counter.get_total_flops()


@pytest.mark.parametrize("name", list(SEED_COUNTS))
def test_seed_parameter_counts_and_flops_totals(name: str) -> None:
    model = _model(name)
    s = summarize(model, (1, 3, 32, 32))
    assert s.params == s.trainable == SEED_COUNTS[name]
    assert s.param_bytes == 4 * SEED_COUNTS[name]
    assert s.flops == s.flops_per_image == _flops(model, (1, 3, 32, 32)) > 0
    assert s.output_shape == (1, 10)
    assert s.row("").params == s.params and s.row("").flops == s.flops


def test_flops_of_a_torchvision_model_and_a_batch() -> None:
    model = _model("resnet18")
    s = summarize(model, (2, 3, 64, 64))
    assert s.flops == _flops(model, (2, 3, 64, 64))
    assert s.flops_per_image == s.flops // 2
    # The children's FLOPs add up to the model's (the stem, four stages, the head).
    assert sum(r.flops for r in s.rows if r.depth == 1) == s.flops


def test_lenet_shapes_params_and_flops_per_layer() -> None:
    s = summarize(_model("lenet"), (1, 3, 32, 32))
    assert [r.name for r in s.rows] == ["", "conv1", "pool", "conv2", "fc1", "fc2", "fc3"]
    assert s.row("conv1").output_shape == [1, 6, 28, 28]
    assert s.row("conv2").output_shape == [1, 16, 10, 10]
    assert s.row("fc1").output_shape == [1, 120]
    assert s.row("fc3").output_shape == [1, 10]
    # The tutorial's one pool module serves both conv blocks: one shape per call.
    assert s.row("pool").output_shapes == ((1, 6, 14, 14), (1, 16, 5, 5))
    assert s.row("conv1").params == 6 * 3 * 5 * 5 + 6
    assert s.row("conv1").flops == 2 * (6 * 28 * 28) * (3 * 5 * 5)  # a multiply-add is 2
    assert s.row("fc1").flops == 2 * 400 * 120
    assert s.row("pool").flops == 0
    assert (s.row("").type, s.row("conv1").type, s.row("conv1").depth) == ("LeNet", "Conv2d", 1)


def test_nested_rows_and_frozen_counts() -> None:
    model = _model("simple_v3", in_channels=1)
    for p in model.model[0].parameters():
        p.requires_grad_(False)
    s = summarize(model, (1, 1, 32, 32))
    assert s.row("model.0").output_shape == [1, 32, 32, 32]
    assert s.row("model.0").depth == 2 and s.row("model").depth == 1
    assert s.params - s.trainable == 32 * 1 * 9 + 32
    assert s.row("model").params == s.params  # a container counts its children


def test_summary_leaves_the_model_as_it_was() -> None:
    model = _model("simple_v3")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summarize(model, (1, 3, 32, 32))
    assert model.training and model.model[2].training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # BN stats
    assert not model.model[0]._forward_hooks  # the hooks are removed


def test_a_forward_that_fails_is_one_line() -> None:
    with pytest.raises(ImgclsError, match=r"cannot run LeNet on an input of shape \[1, 3, 64, "):
        summarize(_model("lenet"), (1, 3, 64, 64))


def test_format_depth_and_totals() -> None:
    s = summarize(_model("simple_v3"), (1, 3, 32, 32))
    full = format_summary(s)
    assert "model.0 (Conv2d)" in full and "[1, 32, 32, 32]" in full
    assert "deeper modules" not in full
    shallow = format_summary(s, depth=1)
    assert "model (Sequential)" in shallow and "model.0 (Conv2d)" not in shallow
    assert "(27 deeper modules counted in their parents" in shallow
    top = format_summary(s, depth=0)
    assert "model (Sequential)" not in top and "CIFAR10NetSimpleV3" in top
    for text in (full, shallow, top):
        assert "parameters:         419,690" in text
        assert f"FLOPs per image:    {s.flops:,}" in text
        assert "input shape:        [1, 3, 32, 32]" in text


# --------------------------------------------------------------------------- the command




def test_cli_models_name_prints_the_summary(capsys) -> None:
    code, out, err = run_cli(capsys, "models", "lenet")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "lenet: 10 classes, 3x32x32 input"
    conv1 = next(ln for ln in lines if "conv1 (Conv2d)" in ln).split()
    assert conv1[2:] == ["[1,", "6,", "28,", "28]", "456", "705,600"]
    assert "parameters:         62,006 (0.24 MiB)" in out
    assert "trainable:          62,006" in out
    assert f"FLOPs per image:    {_flops(_model('lenet'), (1, 3, 32, 32)):,}" in out
    assert "input shape:        [1, 3, 32, 32]" in out


def test_cli_models_options(capsys) -> None:
    code, out, err = run_cli(capsys, "models", "resnet18", "--input-size", "64", "--in-channels",
                          "1", "--num-classes", "3", "--depth", "1")
    assert code == 0, err
    assert out.splitlines()[0] == "resnet18: 3 classes, 1x64x64 input"
    assert "conv1 (Conv2d)" in out and "layer1.0" not in out
    assert "[1, 64, 32, 32]" in out and "output shape:       [1, 3]" in out
    assert "input shape:        [1, 1, 64, 64]" in out
    code, out, _ = run_cli(capsys, "models", "cifar10_net", "--depth", "2")
    assert code == 0 and "parameters:         145,578" in out and "model.7 (Linear)" in out


def test_cli_models_without_name_still_lists(capsys) -> None:
    code, out, _ = run_cli(capsys, "models", "--imgcls-only")
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert rows["simple_v3"][2:] == ["32", "419,690"]


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["lenett"], ["unknown model 'lenett'", "did you mean lenet"]),
        (["lenet", "--input-size", "64"], ["--input-size 64", "lenet takes 32 px"]),
        (["resnet18", "--in-channels", "2"], ["--in-channels 2", "1 or 3"]),
        (["lenet", "--depth", "-1"], ["--depth -1"]),
        (["lenet", "--num-classes", "0"], ["0 classes"]),
    ],
)
def test_cli_models_bad_input_is_one_line(capsys, argv: list[str], needles: list[str]) -> None:
    code, out, err = run_cli(capsys, "models", *argv)
    assert code == 2, (out, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("imgcls: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
