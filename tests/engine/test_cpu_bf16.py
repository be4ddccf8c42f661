"""bfloat16 on the CPU: ``train.amp=auto`` turns bf16 autocast on where the CPU computes it
natively (AVX512-BF16, AMX) and says so; weights, statistics, the loss and checkpoints stay fp32,
and evaluate, predict and export work for a model trained that way."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from imgcls import api, runtime
from imgcls.config import build_config
from imgcls.deploy.export import export_checkpoint
from imgcls.deploy.predict import predict
from imgcls.runs.checkpoint import load_checkpoint

CPU = torch.device("cpu")


@pytest.mark.parametrize(("flags", "feature"), [
    ("fpu sse2 avx2 avx512f", ""),
    ("fpu avx512f avx512_bf16", "AVX512-BF16"),
    ("fpu avx512_bf16 amx_tile amx_bf16", "AMX-BF16"),
])
def test_the_cpu_feature_is_read_from_its_flags(flags, feature):
    assert runtime.bf16_feature(f"processor\t: 0\nflags\t\t: {flags}\n") == feature
    assert runtime.bf16_feature("") == ""


@pytest.mark.parametrize(("native", "expected"), [("AMX-BF16", torch.bfloat16), ("", None)])
def test_auto_is_bf16_exactly_on_cpus_that_have_it(monkeypatch, native, expected):
    monkeypatch.setattr(runtime, "native_bf16", lambda: native)
    assert runtime.autocast_dtype("auto", CPU) is expected
    assert runtime.autocast_dtype("off", CPU) is None
    assert runtime.autocast_dtype("bf16", CPU) is torch.bfloat16  # asked for: on anyway
    assert runtime.autocast_dtype("auto", torch.device("mps")) is None
    words = runtime.describe_amp("auto", CPU)
    assert words == ("" if not native else ", bf16 autocast (train.amp=auto, this CPU has "
                     "AMX-BF16)")


def _cfg(tmp_path: Path, data: Path, **overrides: object):
    values = {"data.source": str(data), "model.name": "resnet20", "loader.batch_size": 8,
              "train.epochs": 2, "sched.warmup_epochs": 0.0, "log.progress": "off",
              "log.tensorboard": False, "log.output": str(tmp_path / "runs"),
              "data.root": str(tmp_path / "cache"), "train.ema": 0.9, "log.name": "bf16"}
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    return build_config(overrides=values)


def test_a_bf16_run_keeps_fp32_state_and_its_model_is_used_everywhere(
        tmp_path, make_image_folder, monkeypatch, capsys):
    monkeypatch.setattr(runtime, "native_bf16", lambda: "AMX-BF16")
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=8, size=32)
    result = api.train(_cfg(tmp_path, data))
    err = capsys.readouterr().err
    assert "bf16 autocast (train.amp=auto, this CPU has AMX-BF16)" in err
    assert "train.amp: bf16" in (result.run_dir / "config.yaml").read_text()
    ckpt_path = result.run_dir / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(ckpt_path)
    floats = [t for t in (*ckpt["model"].values(), *ckpt["ema"].values())
              if isinstance(t, torch.Tensor) and t.is_floating_point()]
    assert floats and all(t.dtype == torch.float32 for t in floats)  # weights, BN stats, EMA
    assert all(s.dtype == torch.float32 for group in ckpt["optimizer"]["state"].values()
               for s in group.values() if isinstance(s, torch.Tensor) and s.is_floating_point())
    # evaluate scores as training validated (the run's bf16), reproducing its numbers
    summary = api.evaluate_checkpoint(ckpt_path)
    assert summary["top1"] == pytest.approx(result.last_metrics["val_acc"], abs=1e-12)
    report = predict(ckpt_path, [str(data / "a")], top_k=2)
    assert report.failed == 0 and len(report.results) == 8
    exported = export_checkpoint(ckpt_path, "onnx", output=tmp_path / "model.onnx")
    assert exported.path.exists() and exported.verified
