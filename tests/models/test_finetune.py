"""Fine-tuning: model.head (replace / append), model.freeze (none / backbone / N stages),
optim.head_lr_mult, partial pretrained loading (model.strict_load), model.head_pool.

A random resnet18 saved to a local file stands in for downloaded ImageNet weights; 32 px inputs.
Big models (vgg11, densenet) are built on the "meta" device: shapes only, no time.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from imgcls.config import ModelConfig, OptimConfig, SchedConfig, build_config, load_yaml, save_yaml
from imgcls.errors import ImgclsError
from imgcls.models import (
    LoadReport,
    backbone_stages,
    create_model,
    find_head,
    head_parameters,
    load_pretrained_file,
    set_train_mode,
)
from imgcls.models.torchvision_models import AppendedHead
from imgcls.optim import create_optimizer, create_scheduler

RESNET_STAGES = ["conv1..bn1", "layer1", "layer2", "layer3", "layer4"]


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A 1000-class resnet18 state_dict with random weights (and BN stats that are not 0/1)."""
    torch.manual_seed(0)
    src = torchvision.models.resnet18()
    with torch.no_grad():
        for m in src.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    state = src.state_dict()
    torch.save(state, path)
    return path, state


def _sgd_step(model: nn.Module, cfg: OptimConfig | None = None, size: int = 32) -> None:
    """One training step the way the loop does it: set_train_mode, forward, backward, step."""
    opt = create_optimizer(model, cfg or OptimConfig(name="sgd", lr=0.1))
    set_train_mode(model)
    out = model(torch.randn(4, 3, size, size))
    nn.functional.cross_entropy(out, torch.arange(4) % out.shape[1]).backward()
    opt.step()


def _changed(before: dict[str, torch.Tensor], model: nn.Module) -> set[str]:
    after = model.state_dict()
    return {k for k, v in before.items() if not torch.equal(v, after[k])}


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- freeze


def test_freeze_backbone_trains_only_the_head(resnet_file) -> None:
    path, state = resnet_file
    torch.manual_seed(1)
    model = create_model(
        ModelConfig(name="resnet18", pretrained=str(path), freeze="backbone"), num_classes=3
    )
    assert torch.equal(model.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    before = _snapshot(model)
    _sgd_step(model)
    assert model.training
    assert not any(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    # Frozen weights and BatchNorm running stats (num_batches_tracked too) unchanged.
    assert _changed(before, model) == {"fc.weight", "fc.bias"}


def test_freeze_first_n_stages(resnet_file) -> None:
    path, _ = resnet_file
    model = create_model(ModelConfig(name="resnet18", pretrained=str(path), freeze="2"), 3)
    stages = backbone_stages(model)
    assert [s.name for s in stages] == RESNET_STAGES
    frozen = {k for s in stages[:2] for k in s.params}
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == frozen
    before = _snapshot(model)
    _sgd_step(model)
    changed = _changed(before, model)
    for key in before:
        early = key.startswith(("conv1.", "bn1.", "layer1."))
        if "num_batches_tracked" in key or not early:
            continue
        assert key not in changed, key  # weights and BN running stats of stem and layer1
    assert all(m.training == (not name.startswith(("bn1", "layer1.")))
               for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d))
    for key in ("layer2.0.conv1.weight", "layer2.0.bn1.running_mean", "layer4.1.conv2.weight",
                "fc.weight"):
        assert key in changed, key


def test_freeze_counts_and_errors() -> None:
    def trainable(freeze: str) -> int:
        model = create_model(ModelConfig(name="resnet18", freeze=freeze), 3)
        return sum(p.requires_grad for p in model.parameters())

    total = len(list(create_model(ModelConfig(name="resnet18"), 3).parameters()))
    assert trainable("none") == trainable("0") == total
    assert trainable("5") == trainable("backbone") == 2  # every stage: the head only
    with pytest.raises(ImgclsError, match=r"model\.freeze=6: resnet18 has only 5 stages "
                                          r"\(conv1\.\.bn1, layer1.*use 0\.\.5"):
        create_model(ModelConfig(name="resnet18", freeze="6"), 3)
    with pytest.raises(ImgclsError, match="model.freeze"):
        create_model(ModelConfig(name="resnet18", freeze="some"), 3)


def test_stages_of_other_families() -> None:
    def names(name: str, **kw: str) -> list[str]:
        with torch.device("meta"):
            return [s.name for s in backbone_stages(create_model(ModelConfig(name=name, **kw), 3))]

    # vgg: the conv blocks split at each MaxPool, then the classifier's hidden layers.
    assert names("vgg11") == ["features.0", "features.3", "features.6..features.8",
                              "features.11..features.13", "features.16..features.18",
                              "classifier"]
    assert names("simple_v3") == ["model.0..model.5", "model.7..model.12",
                                  "model.14..model.19", "model.23"]
    assert names("lenet") == ["conv1", "conv2", "fc1..fc2"]
    assert names("efficientnet_b0") == [f"features.{i}" for i in range(9)]
    # With head=append the kept 1000-way layer belongs to the backbone's last stage.
    assert names("resnet18", head="append") == [*RESNET_STAGES, "fc"]
    assert names("lenet", head="append") == ["conv1", "conv2", "fc1..fc3"]


def test_stages_partition_every_non_head_parameter() -> None:
    for name in ["vit_b_16", "densenet121", "mobilenet_v3_small", "cifar10_net", "googlenet"]:
        with torch.device("meta"):
            model = create_model(ModelConfig(name=name), 3)
        params = [p for s in backbone_stages(model) for p in s.params]
        head = {f"{find_head(model)[0]}.{n}" for n, _ in find_head(model)[1].named_parameters()}
        assert len(params) == len(set(params)), name
        assert set(params) | head == {n for n, _ in model.named_parameters()}, name


def test_freeze_seed_cnn_stages_keeps_bn_eval() -> None:
    model = create_model(ModelConfig(name="simple_v3", freeze="1"), 3)
    set_train_mode(model)
    bns = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert [m.training for _, m in bns] == [False, False, True, True, True, True]


# --------------------------------------------------------------------------- head=append


def test_append_keeps_the_pretrained_1000_way_layer(resnet_file) -> None:
    path, state = resnet_file
    model = create_model(
        ModelConfig(name="resnet18", pretrained=str(path), head="append", freeze="backbone"), 3
    )
    assert isinstance(model.fc, AppendedHead)
    assert torch.equal(model.fc.weight, state["fc.weight"])  # the file's 1000-way layer
    assert model.fc.add_linear.weight.shape == (3, 1000)
    assert find_head(model)[0] == "fc.add_linear"
    head = model.fc.add_linear
    assert {id(p) for p in head_parameters(model)} == {id(p) for p in head.parameters()}
    assert model.pretrained_report.head == ("fc.add_linear.weight", "fc.add_linear.bias")
    assert model.pretrained_report.missing == model.pretrained_report.head  # not in the file
    # freeze: only the appended layer trains; the kept 1000-way layer is frozen.
    before = _snapshot(model)
    _sgd_step(model)
    assert _changed(before, model) == {"fc.add_linear.weight", "fc.add_linear.bias"}
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_append_to_a_sequential_classifier_loads_seed_001_files(tmp_path: Path) -> None:
    # Seed 001: vgg.classifier.add_module('add_linear', nn.Linear(1000, 10)), saved whole.
    src = torchvision.models.mobilenet_v3_small()
    src.classifier.add_module("add_linear", nn.Linear(1000, 10))
    path = tmp_path / "seed001.pth"
    torch.save(src.state_dict(), path)
    model = create_model(ModelConfig(name="mobilenet_v3_small", head="append",
                                     pretrained=str(path)), 10)
    assert find_head(model)[0] == "classifier.add_linear"
    report = model.pretrained_report
    assert report.complete and report.head == () and len(report.loaded) == len(src.state_dict())
    src.eval()
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), src(x))


def test_append_on_vgg11_and_seed_cnns() -> None:
    with torch.device("meta"):
        vgg = create_model(ModelConfig(name="vgg11", head="append"), 4)
        assert vgg(torch.empty(2, 3, 224, 224)).shape == (2, 4)
    assert vgg.classifier[6].out_features == 1000
    assert vgg.classifier.add_linear.weight.shape == (4, 1000)
    assert find_head(vgg)[0] == "classifier.add_linear"
    # imgcls's CNNs keep their 10-way CIFAR-10 layer and append Linear(10, classes).
    lenet = create_model(ModelConfig(name="lenet", head="append"), 3)
    assert lenet.fc3.weight.shape == (10, 84) and lenet.fc3.add_linear.weight.shape == (3, 10)
    v3 = create_model(ModelConfig(name="simple_v3", head="append"), 3)
    assert v3.model[26].out_features == 10 and find_head(v3)[0] == "model.add_linear"
    assert v3.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    with pytest.raises(ImgclsError, match=r"head=append.*squeezenet1_0.*Conv2d"):
        create_model(ModelConfig(name="squeezenet1_0", head="append"), 3)


def test_append_then_resume_rebuilds_the_same_architecture(resnet_file) -> None:
    # On resume / evaluate the model is rebuilt with pretrained="" and loads the checkpoint.
    path, _ = resnet_file
    cfg = ModelConfig(name="resnet18", pretrained=str(path), head="append")
    trained = create_model(cfg, 3)
    again = create_model(ModelConfig(name="resnet18", head="append"), 3)
    again.load_state_dict(trained.state_dict())  # strict: same keys and shapes


# --------------------------------------------------------------------------- head_lr_mult


def _group_lrs(opt: torch.optim.Optimizer) -> list[float]:
    return [g["lr"] for g in opt.param_groups]


def test_head_lr_mult_groups_through_schedule_and_resume() -> None:
    model = create_model(ModelConfig(name="resnet18"), 3)
    cfg = OptimConfig(name="sgd", lr=0.01, head_lr_mult=10.0)
    sched_cfg = SchedConfig(name="cosine", min_lr=0.001, warmup_epochs=1.0)
    epochs, spe = 3, 2

    def fresh() -> tuple[torch.optim.Optimizer, object]:
        opt = create_optimizer(model, cfg)
        return opt, create_scheduler(opt, sched_cfg, epochs, spe)

    opt, sched = fresh()
    body, head = opt.param_groups
    assert {id(p) for p in head["params"]} == {id(model.fc.weight), id(model.fc.bias)}
    assert len(body["params"]) == len(list(model.parameters())) - 2
    full: list[list[float]] = []
    for step in range(epochs * spe):
        full.append(_group_lrs(opt))
        opt.step()
        sched.step_batch()
        if step % spe == spe - 1:
            sched.step_epoch({"val_loss": 1.0})
    assert full[0] == pytest.approx([0.001, 0.01])  # warmup starts at 0.1 x lr, both groups
    assert all(h == pytest.approx(10 * b) for b, h in full)  # in proportion at every step
    assert _group_lrs(opt) == pytest.approx([0.001, 0.01])  # cosine ends at min_lr x scale

    # Resume mid-run from a saved state: the same lrs, in both groups.
    opt, sched = fresh()
    got: list[list[float]] = []
    for step in range(epochs * spe):
        if step == 3:
            buf = io.BytesIO()
            torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
            buf.seek(0)
            saved = torch.load(buf, weights_only=True)
            opt, sched = fresh()
            opt.load_state_dict(saved["opt"])
            sched.load_state_dict(saved["sched"])
        got.append(_group_lrs(opt))
        opt.step()
        sched.step_batch()
        if step % spe == spe - 1:
            sched.step_epoch({"val_loss": 1.0})
    assert got == full


def test_head_lr_mult_with_frozen_backbone_and_plateau() -> None:
    model = create_model(ModelConfig(name="resnet18", freeze="backbone"), 3)
    opt = create_optimizer(model, OptimConfig(lr=0.01, head_lr_mult=5.0))
    (group,) = opt.param_groups  # the body is all frozen: the head's group only
    assert group["lr"] == pytest.approx(0.05) and len(group["params"]) == 2

    model = create_model(ModelConfig(name="resnet18"), 3)
    opt = create_optimizer(model, OptimConfig(lr=0.01, head_lr_mult=5.0))
    sched = create_scheduler(
        opt, SchedConfig(name="plateau", plateau_metric="val_loss", plateau_patience=0,
                         plateau_factor=0.1, min_lr=0.002, warmup_epochs=0.0), 5, 1)
    for _ in range(4):
        opt.step()
        sched.step_batch()
        sched.step_epoch({"val_loss": 1.0})
    assert _group_lrs(opt) == pytest.approx([0.002, 0.01])  # floors are scaled too


# --------------------------------------------------------------------------- partial loading


def _doctored(state: dict[str, torch.Tensor], path: Path) -> Path:
    """The file minus one conv weight, plus an unknown key, with one conv weight reshaped."""
    bad = dict(state)
    del bad["layer4.1.conv2.weight"]
    bad["extra.weight"] = torch.zeros(2)
    bad["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    torch.save(bad, path)
    return path


def test_load_report_of_a_new_head(resnet_file, caplog: pytest.LogCaptureFixture) -> None:
    path, _ = resnet_file
    model = create_model(ModelConfig(name="resnet18"), 3)
    with caplog.at_level(logging.INFO, logger="imgcls"):
        report = load_pretrained_file(model, path, "resnet18")
    assert isinstance(report, LoadReport)
    assert report.mismatched == report.head == ("fc.weight", "fc.bias")
    assert report.missing == () and report.unexpected == () and report.complete
    assert len(report.loaded) == len(model.state_dict()) - 2
    assert "fc.weight" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_strict_load_refuses_and_loads_nothing(resnet_file, tmp_path: Path) -> None:
    path = _doctored(resnet_file[1], tmp_path / "bad.pth")
    model = create_model(ModelConfig(name="resnet18"), 3)
    before = _snapshot(model)
    with pytest.raises(ImgclsError, match=r"bad\.pth does not fit model resnet18: 3 problem"
                                          r".*model\.strict_load=false") as err:
        load_pretrained_file(model, path, "resnet18")
    assert "\n" not in str(err.value)
    assert _changed(before, model) == set()
    with pytest.raises(ImgclsError, match="layer4.1.conv2.weight missing"):
        create_model(ModelConfig(name="resnet18", pretrained=str(path)), 3)


def test_non_strict_load_reports_the_rest(
    resnet_file, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = resnet_file[1]
    path = _doctored(state, tmp_path / "bad.pth")
    with caplog.at_level(logging.WARNING, logger="imgcls"):
        model = create_model(
            ModelConfig(name="resnet18", pretrained=str(path), strict_load=False), 3
        )
    report = model.pretrained_report
    assert report.missing == ("layer4.1.conv2.weight",)
    assert report.unexpected == ("extra.weight",)
    assert report.mismatched == ("layer1.0.conv1.weight", "fc.weight", "fc.bias")
    assert report.head == ("fc.weight", "fc.bias")
    assert set(report.problems) == {"layer4.1.conv2.weight", "extra.weight",
                                    "layer1.0.conv1.weight"}
    assert not report.complete
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    for key in ("layer4.1.conv2.weight", "extra.weight", "layer1.0.conv1.weight"):
        assert key in warning.getMessage()
    # What fits is loaded; the rest keeps its initialisation.
    assert torch.equal(model.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert not torch.equal(model.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert model.layer1[0].conv1.weight.shape == (64, 64, 3, 3)


def test_a_file_of_which_nothing_fits_is_an_error_even_non_strict(tmp_path: Path) -> None:
    path = tmp_path / "lenet.pth"
    torch.save(create_model(ModelConfig(name="lenet"), 10).state_dict(), path)
    with pytest.raises(ImgclsError, match="not one tensor fits model resnet18"):
        create_model(ModelConfig(name="resnet18", pretrained=str(path), strict_load=False), 3)


# --------------------------------------------------------------------------- head_pool


def test_head_pool_max_and_avg() -> None:
    model = create_model(ModelConfig(name="resnet18", head_pool="max"), 3).eval()
    assert isinstance(model.avgpool, nn.AdaptiveMaxPool2d)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (2, 3)
        features = model.layer4(model.layer3(model.layer2(model.layer1(
            model.maxpool(model.relu(model.bn1(model.conv1(x))))))))
        torch.testing.assert_close(model(x), model.fc(features.amax(dim=(2, 3))))
    avg = create_model(ModelConfig(name="resnet18", head_pool="avg"), 3)
    assert type(avg.avgpool) is nn.AdaptiveAvgPool2d
    small = create_model(ModelConfig(name="mobilenet_v3_small", head_pool="max"), 3).eval()
    assert isinstance(small.avgpool, nn.AdaptiveMaxPool2d)
    with torch.no_grad():
        assert small(torch.randn(2, 3, 32, 32)).shape == (2, 3)


@pytest.mark.parametrize(
    ("name", "why"),
    [("vgg11", "pools to 7x7"), ("densenet121", "no global pooling"),
     ("simple_v3", "imgcls's CNNs flatten"), ("lenet", "imgcls's CNNs flatten")],
)
def test_head_pool_unsupported_models(name: str, why: str) -> None:
    with torch.device("meta"), pytest.raises(ImgclsError, match=f"head_pool=max.*{name}.*{why}"):
        create_model(ModelConfig(name=name, head_pool="max"), 3)


# --------------------------------------------------------------------------- config


def test_freeze_config_coercion_and_validation(tmp_path: Path) -> None:
    assert build_config(overrides={"model.freeze": True}).model.freeze == "backbone"
    assert build_config(overrides={"model.freeze": False}).model.freeze == "none"
    assert build_config(overrides={"model.freeze": 2}).model.freeze == "2"
    assert build_config().model.freeze == "none"
    assert ModelConfig(freeze=True).freeze == "backbone"  # type: ignore[arg-type]
    # An old run's config / checkpoint (freeze: true) still builds.
    recipe = tmp_path / "old.yaml"
    recipe.write_text("model:\n  name: resnet18\n  freeze: true\n", encoding="utf-8")
    cfg = build_config(load_yaml(recipe))
    assert cfg.model.freeze == "backbone"
    save_yaml(build_config(overrides={"model.freeze": 3}), recipe)
    assert build_config(load_yaml(recipe)).model.freeze == "3"  # saved as a string
    for bad in ("yes", -1, 2.5, "all"):
        with pytest.raises(ImgclsError, match="model.freeze"):
            build_config(overrides={"model.freeze": bad})


@pytest.mark.parametrize(
    ("key", "value"),
    [("model.head", "prepend"), ("model.head_pool", "min"), ("optim.head_lr_mult", 0),
     ("optim.head_lr_mult", -1.0), ("model.strict_load", "maybe")],
)
def test_new_keys_are_validated(key: str, value: object) -> None:
    with pytest.raises(ImgclsError, match=key.replace(".", r"\.")):
        build_config(overrides={key: value})


def test_new_keys_defaults() -> None:
    cfg = build_config()
    assert (cfg.model.head, cfg.model.head_pool, cfg.model.strict_load) == (
        "replace", "default", True)
    assert cfg.optim.head_lr_mult == 1.0
    opt = create_optimizer(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), cfg.optim)
    assert len(opt.param_groups) == 1  # no split unless asked: old checkpoints still resume
