"""The speed switches: same predictions with channels_last and autocast, EMA, flip TTA, the fast
optimiser settings, and the loader keys (cutout, flip_mode)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import run_cli
from torch import nn

from imgcls import api, runtime
from imgcls.config import ModelConfig, OptimConfig, SchedConfig, TransformConfig, build_config
from imgcls.data.transforms import Cutout, build_transform
from imgcls.deploy.load import load_model
from imgcls.engine.loop import Speed, evaluate
from imgcls.errors import ImgclsError
from imgcls.models import create_model
from imgcls.optim import create_optimizer, create_scheduler
from imgcls.runs.checkpoint import load_checkpoint

QUICK = {
    "loader.batch_size": 8,
    "sched.warmup_epochs": 0.0,
    "log.progress": "off",
    "log.tensorboard": False,
}


def _cfg(tmp_path: Path, data: Path, **overrides: object):
    values = {**QUICK, "data.source": str(data), "log.output": str(tmp_path / "runs")}
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    return build_config(overrides=values)


@pytest.mark.parametrize("name", ["simple_v3", "resnet20", "fastnet_s"])
def test_channels_last_gives_the_same_predictions(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(ModelConfig(name=name), 10).eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        reference = model(x)
        model = model.to(memory_format=torch.channels_last)
        fast = model(Speed(channels_last=True).inputs(x, torch.device("cpu")))
    torch.testing.assert_close(fast, reference, atol=1e-4, rtol=1e-4)


def test_bf16_autocast_agrees_with_fp32() -> None:
    torch.manual_seed(0)
    model = create_model(ModelConfig(name="resnet20"), 10).eval()
    x = torch.randn(16, 3, 32, 32)
    cpu = torch.device("cpu")
    with torch.no_grad():
        reference = model(x)
        with Speed(amp_dtype=torch.bfloat16).autocast(cpu):
            low = model(x)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), reference, atol=0.1, rtol=0.05)
    assert (low.float().argmax(1) == reference.argmax(1)).float().mean() >= 0.8


def test_keep_freed_memory_applies_on_glibc() -> None:
    import platform

    applied = runtime.keep_freed_memory()
    assert applied is (platform.libc_ver()[0] == "glibc")
    big = torch.ones(64, 1024, 1024)  # 256 MB from the heap now, not mmap: still usable
    assert float(big.sum()) == 64 * 1024 * 1024


def test_amp_auto_follows_the_cpu_and_explicit_values_win() -> None:
    cpu = torch.device("cpu")
    native = torch.bfloat16 if runtime.native_bf16() else None  # tests/engine/test_cpu_bf16.py
    assert runtime.autocast_dtype("auto", cpu) is native
    assert runtime.autocast_dtype("off", cpu) is None
    assert runtime.autocast_dtype("bf16", cpu) is torch.bfloat16
    assert runtime.autocast_dtype("fp16", cpu) is torch.float16


def test_flip_tta_averages_the_logits_of_both_mirrors() -> None:
    torch.manual_seed(0)
    model = create_model(ModelConfig(name="lenet"), 3).eval()
    images, labels = torch.randn(10, 3, 32, 32), torch.randint(0, 3, (10,))
    loss_fn = nn.CrossEntropyLoss()
    cpu = torch.device("cpu")
    result = evaluate(model, [(images, labels)], loss_fn, cpu, 3, tta="flip")
    with torch.no_grad():
        logits = (model(images) + model(images.flip(-1))) / 2
    assert result.top1 == (logits.argmax(1) == labels).sum().item() / 10
    assert result.loss == pytest.approx(loss_fn(logits, labels).item(), rel=1e-6)
    plain = evaluate(model, [(images, labels)], loss_fn, cpu, 3)
    assert plain.loss != pytest.approx(result.loss)


def test_norm_lr_mult_groups_and_decay() -> None:
    model = create_model(ModelConfig(name="fastnet_s"), 10)
    opt = create_optimizer(model, OptimConfig(lr=0.1, weight_decay=1e-3, norm_lr_mult=64))
    weights, biases = opt.param_groups
    norm_biases = {id(m.bias) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert {id(p) for p in biases["params"]} == norm_biases
    assert id(model.whiten.bias) in {id(p) for p in weights["params"]}  # a bias, not a norm's
    assert (weights["lr"], weights["weight_decay"]) == (0.1, 1e-3)
    assert biases["lr"] == pytest.approx(6.4)
    assert biases["weight_decay"] == pytest.approx(1e-3 / 64)
    sched = create_scheduler(opt, SchedConfig(name="cosine", warmup_epochs=0), 2, 5)
    for _ in range(5):
        opt.step()
        sched.step_batch()
    assert biases["lr"] / weights["lr"] == pytest.approx(64)  # kept in proportion
    # with the head split too: body, body norms, head (resnet20's head has no norm layer)
    model = create_model(ModelConfig(name="resnet20"), 10)
    opt = create_optimizer(model, OptimConfig(norm_lr_mult=2, head_lr_mult=10, lr=1.0))
    assert [g["lr"] for g in opt.param_groups] == [1.0, 2.0, 10.0]


def test_optimizer_kernels() -> None:
    model = create_model(ModelConfig(name="lenet"), 10)
    assert create_optimizer(model, OptimConfig()).defaults["foreach"] is True  # auto on CPU
    assert create_optimizer(model, OptimConfig(kernel="loop")).defaults["foreach"] is False
    fused = create_optimizer(model, OptimConfig(kernel="fused"))
    assert fused.defaults["fused"] is True
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    fused.step()  # torch's fused SGD runs on CPU too


def test_linear_schedule_warms_up_then_decays_to_min_lr() -> None:
    model = create_model(ModelConfig(name="lenet"), 10)
    opt = create_optimizer(model, OptimConfig(lr=1.0))
    sched = create_scheduler(
        opt, SchedConfig(name="linear", warmup_epochs=1, warmup_start_factor=0.2, min_lr=0.1),
        epochs=5, steps_per_epoch=10,
    )
    lrs = []
    for _ in range(50):
        lrs.append(sched.get_last_lr())
        opt.step()
        sched.step_batch()
    assert lrs[0] == pytest.approx(0.2) and lrs[10] == pytest.approx(1.0)
    decay = lrs[10:]
    assert all(a > b for a, b in zip(decay, decay[1:], strict=False))
    steps = [a - b for a, b in zip(decay, decay[1:], strict=False)]
    assert max(steps) - min(steps) < 1e-9  # a straight line ...
    assert sched.get_last_lr() == pytest.approx(0.1)  # ... to min_lr after the last batch


def test_cutout_transform_zeroes_one_square() -> None:
    torch.manual_seed(0)
    image = torch.ones(3, 10, 12)
    out = Cutout(4)(image)
    zeros = (out == 0).all(dim=0)
    rows, cols = zeros.any(dim=1).nonzero(), zeros.any(dim=0).nonzero()
    assert zeros.sum() == 16 and len(rows) == 4 and len(cols) == 4
    assert rows.max() - rows.min() == 3 and cols.max() - cols.min() == 3
    assert image.min() == 1  # the input is left alone
    tf = build_transform(TransformConfig(preset="none", cutout=8), train=True, image_size=32)
    assert isinstance(tf.transforms[-1], Cutout)
    assert not any(isinstance(t, Cutout) for t in build_transform(
        TransformConfig(preset="none", cutout=8), train=False, image_size=32).transforms)


def test_alternate_flip_needs_the_memory_loader(tmp_path, make_image_folder) -> None:
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=4, size=32)
    cfg = _cfg(tmp_path, data, transforms__flip_mode="alternate", transforms__hflip=0.5,
               data__loader="dataloader", model__name="lenet")
    with pytest.raises(ImgclsError, match="flip_mode=alternate needs the device-resident"):
        api.train(cfg)
    assert not (tmp_path / "runs").exists()  # refused before anything was written


@pytest.mark.parametrize("loader", ["dataloader", "memory"])
def test_ema_is_validated_saved_and_predicted_with(tmp_path, make_image_folder, loader) -> None:
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=10, size=32)
    cfg = _cfg(tmp_path, data, model__name="resnet20", train__epochs=2, train__ema=0.9,
               train__tta="flip", transforms__cutout=8, data__loader=loader, optim__lr=0.05)
    result = api.train(cfg)
    ckpt_path = result.run_dir / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(ckpt_path)
    assert int(ckpt["ema"]["n_averaged"]) == ckpt["step"]
    loaded = load_model(ckpt_path)
    ema_weight = ckpt["ema"]["module.fc.weight"]
    torch.testing.assert_close(loaded.model.state_dict()["fc.weight"], ema_weight)
    assert not torch.equal(ema_weight, ckpt["model"]["fc.weight"])
    # evaluate reproduces the val_acc of training: EMA weights, flip TTA, channels_last
    summary = api.evaluate_checkpoint(ckpt_path)
    assert summary["top1"] == pytest.approx(result.last_metrics["val_acc"], abs=1e-12)
    assert summary["loss"] == pytest.approx(result.last_metrics["val_loss"], rel=1e-5)
    # resume continues the average
    resumed = api.train(resume=result.run_dir, overrides={"train.epochs": 3})
    again = load_checkpoint(resumed.run_dir / "checkpoints" / "last.pt")
    assert int(again["ema"]["n_averaged"]) == again["step"] > ckpt["step"]


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path, make_image_folder) -> None:
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=8, size=32)
    common = {"model__name": "lenet", "train__epochs": 1, "train__deterministic": True,
              "loader__shuffle": False, "transforms__preset": "none"}
    eager = api.train(_cfg(tmp_path, data, log__name="eager", **common))
    compiled = api.train(_cfg(tmp_path, data, log__name="compiled", train__compile=True,
                              **common))
    a = load_checkpoint(eager.run_dir / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(compiled.run_dir / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys()  # the plain model's names, no _orig_mod. prefix
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("command", ["train", "repeat", "cv", "evaluate"])
@pytest.mark.parametrize("setting", ["1", "0"])
def test_training_commands_reuse_freed_memory(monkeypatch, capsys, command, setting):
    calls = []
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setenv("IMGCLS_MALLOPT", setting)
    count = {"repeat": ["--seeds", "2"], "cv": ["--folds", "2"]}.get(command, [])
    target = ["--data", "digits"] if command != "evaluate" else ["no-such.pt"]
    code, _, _ = run_cli(capsys, command, *count, *target, *(
        ["train.epochs=0"] if command != "evaluate" else []))
    assert code == 2  # refused at once (a bad value; a missing file): only the start matters
    trains = command != "evaluate" and setting == "1"
    assert calls == ([1] if trains else [])
