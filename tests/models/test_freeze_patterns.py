"""model.freeze=[patterns]: freeze parameters by name, as the seeds do with
``if 'conv' in name: param.requires_grad = False`` (substrings), or with fnmatch globs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from imgcls.cli import main
from imgcls.config import (
    ModelConfig,
    OptimConfig,
    build_config,
    load_yaml,
    parse_override,
    save_yaml,
)
from imgcls.errors import ImgclsError
from imgcls.models import create_model, extract_state_dict, freeze_matching, set_train_mode
from imgcls.models.finetune import pattern_matches
from imgcls.optim import create_optimizer


def _model(name: str, freeze: object = "none", **kw: object) -> nn.Module:
    torch.manual_seed(0)
    return create_model(ModelConfig(name=name, freeze=freeze, **kw), 10)  # type: ignore[arg-type]


def _frozen(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if not p.requires_grad]


def _seed_loop(model: nn.Module, word: str) -> list[str]:
    """Seed 002's loop, on a fresh model: which names it freezes."""
    for name, param in model.named_parameters():
        if word in name:
            param.requires_grad = False
    return _frozen(model)


@pytest.mark.parametrize(
    ("name", "word"),
    [("simple_v3", "model.0"), ("simple_v3", "model.1"), ("simple_v3", "bias"),
     ("lenet", "conv"), ("resnet18", "conv"), ("resnet18", "bn")],
)
def test_substring_freezes_exactly_what_the_seed_loop_does(name: str, word: str) -> None:
    expected = _seed_loop(_model(name), word)
    model = _model(name, [word])
    assert _frozen(model) == expected and expected
    # Substrings, as in the seeds: "model.1" takes model.10 .. model.19, not model.1 (a ReLU).
    if word == "model.1":
        assert {n.split(".")[1] for n in expected} == {"10", "12", "14", "16", "17", "19"}


def test_frozen_tensors_and_values_reported(capsys) -> None:
    # The first conv and its BatchNorm (a glob: the substring "model.2" would take model.23 too)
    model = _model("simple_v3", ["model.0.*", "model.2.*"])
    err = capsys.readouterr().err
    params = dict(model.named_parameters())
    values = sum(params[n].numel() for n in _frozen(model))
    assert _frozen(model) == ["model.0.weight", "model.0.bias", "model.2.weight", "model.2.bias"]
    assert values == 32 * 3 * 9 + 32 + 32 + 32
    total = sum(p.numel() for p in model.parameters())
    line = (f"model.freeze=['model.0.*', 'model.2.*']: froze 4 of {len(params)} parameter tensors "
            f"({values:,} of {total:,} values)")
    assert line in err.splitlines()
    # A rebuilt checkpoint (resume, evaluate, predict) freezes the same, silently.
    cfg = ModelConfig(name="simple_v3", freeze=["model.0.*", "model.2.*"])
    again = create_model(cfg, 10, from_checkpoint=True)
    assert _frozen(again) == _frozen(model)
    assert "froze" not in capsys.readouterr().err


def test_globs_match_the_whole_name() -> None:
    assert _frozen(_model("lenet", ["fc[12].*"])) == [
        "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert _frozen(_model("lenet", ["*.bias"])) == [
        "conv1.bias", "conv2.bias", "fc1.bias", "fc2.bias", "fc3.bias"]
    assert _frozen(_model("resnet18", ["layer?.0.conv1.weight"])) == [
        f"layer{i}.0.conv1.weight" for i in range(1, 5)]
    # Mixed: a glob and a substring; overlapping patterns freeze a tensor once.
    mixed = _model("resnet18", ["layer1.*", "conv1", "layer1.0"])
    assert _frozen(mixed) == [n for n, _ in mixed.named_parameters()
                              if n.startswith("layer1.") or "conv1" in n]
    assert pattern_matches("conv", "layer1.0.conv1.weight")
    assert not pattern_matches("conv1*", "layer1.0.conv1.weight")  # a glob is anchored
    assert not pattern_matches("Conv", "conv1.weight")  # case matters


@pytest.mark.parametrize(
    ("name", "patterns", "bad", "kind"),
    [("simple_v3", ["conv"], "'conv'", "substring"),  # its layers are model.0, model.3, ...
     ("lenet", ["conv", "fc.*"], "'fc.*'", "glob")],
)
def test_a_pattern_that_matches_nothing_is_one_line(name, patterns, bad, kind) -> None:
    with pytest.raises(ImgclsError) as info:
        _model(name, patterns)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"model.freeze: pattern {bad} ({kind}")
    first = next(iter(_model(name).named_parameters()))[0]
    assert first in text and f"imgcls models {name}" in text


def test_yaml_list_from_the_command_line(tmp_path: Path) -> None:
    cfg = build_config(overrides=dict([parse_override("model.freeze=[conv]")]))
    assert cfg.model.freeze == ["conv"]
    cfg = build_config(overrides=dict([parse_override("model.freeze=['features.*', 'conv']")]))
    assert cfg.model.freeze == ["features.*", "conv"]
    cfg = build_config(overrides=dict([
        parse_override("model.name=lenet"), parse_override("model.freeze=[conv]")]))
    assert _frozen(create_model(cfg.model, 10)) == [
        "conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"]
    # Saved with the run and inside checkpoints: it reads back as the same list.
    save_yaml(cfg, tmp_path / "config.yaml")
    assert build_config(load_yaml(tmp_path / "config.yaml")).model.freeze == ["conv"]
    assert ModelConfig(freeze=("conv",)).freeze == ["conv"]  # type: ignore[arg-type]
    # The other forms keep working.
    assert build_config(overrides={"model.freeze": True}).model.freeze == "backbone"
    assert build_config(overrides={"model.freeze": 2}).model.freeze == "2"


@pytest.mark.parametrize("text", ["model.freeze=[]", "model.freeze=['']", "model.freeze=[[a]]",
                                  "model.freeze=conv"])
def test_bad_pattern_lists_are_refused(text: str) -> None:
    with pytest.raises(ImgclsError, match=r"model\.freeze"):
        build_config(overrides=dict([parse_override(text)]))


def test_training_steps_leave_frozen_weights_and_bn_statistics_unchanged() -> None:
    model = _model("simple_v3", ["model.0.*", "model.2.*", "model.7.*"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = create_optimizer(model, OptimConfig(name="sgd", lr=0.1, head_lr_mult=10))
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in opt.param_groups for p in g["params"]} == trainable
    for _ in range(3):
        set_train_mode(model)
        out = model(torch.randn(8, 3, 32, 32))
        nn.functional.cross_entropy(out, torch.arange(8) % 10).backward()
        opt.step()
        opt.zero_grad()
    after = model.state_dict()
    changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
    # The frozen conv, BatchNorm and conv: unchanged; the fully frozen BatchNorm (model.2) stays
    # in eval mode, so its running statistics are unchanged too.
    for key in ("model.0.weight", "model.0.bias", "model.2.weight", "model.2.running_mean",
                "model.2.running_var", "model.7.weight"):
        assert key not in changed, key
    assert not model.model[2].training and model.model[5].training
    for key in ("model.3.weight", "model.5.running_mean", "model.26.weight"):
        assert key in changed, key


def test_a_partly_frozen_batchnorm_keeps_training() -> None:
    model = _model("simple_v3", ["model.2.weight"])
    set_train_mode(model)
    assert model.model[2].training  # its bias still trains, so its statistics update


def test_freezing_everything_is_refused_by_the_optimiser() -> None:
    model = _model("lenet", ["*"])
    assert not any(p.requires_grad for p in model.parameters())
    with pytest.raises(ImgclsError, match="no trainable parameters"):
        create_optimizer(model, OptimConfig())


def test_freeze_matching_directly() -> None:
    report = freeze_matching(_model("lenet"), ["conv1"], "lenet")
    assert report.names == ("conv1.weight", "conv1.bias") and report.values == 456
    assert report.total_tensors == 10 and report.total_values == 62_006


def test_train_run_keeps_the_frozen_pretrained_weights(tmp_path, make_image_folder, capsys):
    """Through the command line: the frozen tensors end the run as the file had them."""
    torch.manual_seed(0)
    init = tmp_path / "init.pt"
    torch.save(create_model(ModelConfig(name="lenet"), 2).state_dict(), init)
    data = make_image_folder(tmp_path / "imgs", classes=("ants", "bees"), per_class=10)
    code = main(["train", "--data", str(data), "--epochs", "1", "--model", "lenet",
                 "--batch-size", "8", "sched.warmup_epochs=0", "log.progress=off",
                 "--output", str(tmp_path / "runs"), "--name", "r", f"model.pretrained={init}",
                 "model.freeze=[conv, 'fc1.*']"])
    _, err = capsys.readouterr()
    assert code == 0, err
    assert err.count("model.freeze=['conv', 'fc1.*']: froze 6 of 10 parameter tensors") == 1
    saved = torch.load(init)
    ckpt = torch.load(tmp_path / "runs" / "r" / "checkpoints" / "last.pt", weights_only=False)
    state = extract_state_dict(ckpt)
    assert state is not None
    for key in ("conv1.weight", "conv2.bias", "fc1.weight", "fc1.bias"):
        assert torch.equal(state[key], saved[key]), key
    assert not torch.equal(state["fc2.weight"], saved["fc2.weight"])
    assert ckpt["config"]["model"]["freeze"] == ["conv", "fc1.*"]
    code = main(["evaluate", str(tmp_path / "runs" / "r" / "checkpoints" / "last.pt"), "--json"])
    assert code == 0 and "froze" not in capsys.readouterr().err
