"""imgcls export: ONNX and TorchScript files that compute what the eager model computes.

Checkpoints come from real (1-epoch) training runs on a tiny learnable folder, once per module;
the torchvision one is written directly with the keys training writes. Every exported file is
also re-run here, independently of the exporter's own verification.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import _make_image_folder

from imgcls import api, cli
from imgcls.config import build_config
from imgcls.deploy.export import TOLERANCE, export_checkpoint
from imgcls.deploy.load import load_model
from imgcls.errors import ImgclsError

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks" / "predict_throughput.py"
FAST = {
    "loader.batch_size": 16,
    "optim.lr": 0.02,
    "sched.warmup_epochs": 0.0,
    "train.epochs": 1,
    "log.progress": "off",
    "log.tensorboard": False,
}


def _train(tmp: Path, data: Path, name: str, **overrides: object) -> Path:
    values = {**FAST, "data.source": str(data), "log.output": str(tmp / "runs"), "log.name": name,
              **overrides}
    return api.train(build_config(overrides=values)).run_dir / "checkpoints" / "last.pt"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("export")
    data = _make_image_folder(tmp / "imgs", classes=("a", "b", "c"), per_class=6)
    return {
        "lenet": _train(tmp, data, "lenet", **{"model.name": "lenet"}),
        "simple_v3": _train(tmp, data, "simple_v3", **{"model.name": "simple_v3"}),
        "raw": _train(tmp, data, "raw", **{"model.name": "lenet", "transforms.normalize": "none"}),
        "resnet18": _resnet18_checkpoint(tmp / "resnet18.pt"),
    }


def _resnet18_checkpoint(path: Path) -> Path:
    """A torchvision model at 32 px with random weights, saved with training's keys."""
    return _benchmark_module().write_checkpoint("resnet18", 32, path, num_classes=4)


def _benchmark_module():
    """benchmarks/ is not a package: load the script as a module."""
    spec = importlib.util.spec_from_file_location("predict_throughput", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _runner(path: Path, fmt: str):
    """Load an exported file the way a user would, without imgcls's helpers."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated
        module = torch.jit.load(str(path))
    return lambda x: module(x).detach()


def _eager(checkpoint: Path, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return load_model(checkpoint).model(x)


# --------------------------------------------------------------------------- float input


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("model", ["lenet", "simple_v3"])
def test_export_matches_eager_on_any_batch_size(checkpoints, tmp_path, model, fmt):
    out = tmp_path / f"model.{fmt}"
    report = export_checkpoint(checkpoints[model], fmt=fmt, output=out)
    assert report.verified and report.max_abs_diff <= TOLERANCE
    assert report.path == out and out.is_file() and report.sidecar.is_file()
    assert set(report.diffs) == {"3x3x32x32", "1x3x32x32"}  # not the export batch of 2
    assert report.input_dtype == "float32" and report.input_shape == ["N", 3, 32, 32]

    run = _runner(out, fmt)
    generator = torch.Generator().manual_seed(1)
    for batch in (5, 1, 7):
        x = torch.randn(batch, 3, 32, 32, generator=generator)
        got, want = run(x), _eager(checkpoints[model], x)
        assert got.shape == (batch, 3)
        assert (got - want).abs().max().item() <= TOLERANCE


def test_torchvision_model_exports(checkpoints, tmp_path):
    report = export_checkpoint(checkpoints["resnet18"], fmt="onnx", output=tmp_path / "r.onnx")
    assert report.verified and report.num_classes == 4
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    got = _runner(report.path, "onnx")(x)
    assert (got - _eager(checkpoints["resnet18"], x)).abs().max().item() <= TOLERANCE


# --------------------------------------------------------------------------- uint8 input


def _uint8_images(n: int, height: int, width: int, seed: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, height, width), dtype=torch.uint8, generator=generator)


@pytest.mark.parametrize(("key", "fmt"), [("simple_v3", "onnx"), ("raw", "onnx"),
                                          ("lenet", "torchscript")])
def test_include_preprocess_matches_eval_transform(checkpoints, tmp_path, key, fmt):
    checkpoint = checkpoints[key]
    out = tmp_path / f"prep.{fmt}"
    report = export_checkpoint(checkpoint, fmt=fmt, output=out, include_preprocess=True)
    assert report.verified and report.input_dtype == "uint8"
    assert report.input_shape == ["N", 3, "H", "W"]

    loaded = load_model(checkpoint)
    transform = loaded.eval_transform()
    run = _runner(out, fmt)
    images = _uint8_images(5, 32, 32)
    normalised = torch.stack([transform(img) for img in images])
    with torch.inference_mode():
        want = loaded.model(normalised)
    assert (run(images) - want).abs().max().item() <= TOLERANCE
    # Any other size is resized in the graph: it runs and keeps the batch.
    assert run(_uint8_images(2, 45, 37)).shape == (2, 3)


# --------------------------------------------------------------------------- sidecar, paths


def test_sidecar_describes_the_input(checkpoints, tmp_path):
    report = export_checkpoint(checkpoints["lenet"], fmt="torchscript",
                               output=tmp_path / "m.pt")
    assert report.sidecar == tmp_path / "m.pt.json"
    side = json.loads(report.sidecar.read_text())
    record = load_model(checkpoints["lenet"]).record
    assert side["classes"] == ["a", "b", "c"]
    assert side["input_size"] == 32
    assert side["mean"] == record.mean and side["std"] == record.std
    assert side["input_dtype"] == "float32" and side["input_layout"] == "NCHW"
    assert side["format"] == "torchscript"
    assert side["source_checkpoint"] == str(checkpoints["lenet"].resolve())
    assert side["torch_version"] == torch.__version__ and side["imgcls_version"]
    assert side["verification"]["ok"] is True

    raw = export_checkpoint(checkpoints["raw"], fmt="onnx", output=tmp_path / "raw.onnx",
                            include_preprocess=True)
    side = json.loads(raw.sidecar.read_text())
    assert side["mean"] is None and side["std"] is None
    assert side["input_dtype"] == "uint8" and side["format"] == "onnx"
    assert side["onnxruntime_version"]


def test_default_output_is_beside_the_checkpoint(checkpoints, tmp_path):
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(checkpoints["lenet"].read_bytes())
    report = export_checkpoint(checkpoint, fmt="torchscript")
    assert report.path == tmp_path / "best.torchscript.pt"
    assert report.sidecar == tmp_path / "best.torchscript.pt.json"
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left nothing behind


def test_unwritable_output_names_the_path(checkpoints, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ImgclsError, match="cannot write .*file"):
        export_checkpoint(checkpoints["lenet"], fmt="torchscript", output=blocker / "m.pt")


# --------------------------------------------------------------------------- failure paths


def test_failed_verification_keeps_the_file(checkpoints, tmp_path, monkeypatch):
    from imgcls.deploy import export

    real = export._run_torchscript

    def off_by_a_little(path):
        run = real(path)
        return lambda x: run(x) + 1e-3

    monkeypatch.setattr(export, "_run_torchscript", off_by_a_little)
    out = tmp_path / "bad.pt"
    with pytest.raises(ImgclsError, match="failed verification.*0.001.*kept"):
        export_checkpoint(checkpoints["lenet"], fmt="torchscript", output=out)
    assert out.is_file()
    assert json.loads((tmp_path / "bad.pt.json").read_text())["verification"]["ok"] is False


def test_dynamo_failure_falls_back_to_torchscript_exporter(checkpoints, tmp_path, monkeypatch):
    real = torch.onnx.export

    def no_dynamo(*args, dynamo=True, **kwargs):
        if dynamo:
            raise RuntimeError("torch.export could not capture the model")
        return real(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    report = export_checkpoint(checkpoints["lenet"], fmt="onnx", output=tmp_path / "m.onnx")
    assert report.verified and "dynamo=False" in report.exporter
    assert any("could not capture" in note for note in report.notes)
    assert "dynamo=False" in report.describe()
    x = torch.randn(7, 3, 32, 32)
    got = _runner(report.path, "onnx")(x)
    assert (got - _eager(checkpoints["lenet"], x)).abs().max().item() <= TOLERANCE


def test_missing_onnxruntime_says_what_to_install(checkpoints, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(ImgclsError, match=r'pip install "imgcls\[export\]"'):
        export_checkpoint(checkpoints["lenet"], fmt="onnx")


# --------------------------------------------------------------------------- command line


def test_cli_export_prints_the_diff(checkpoints, tmp_path, capsys):
    out = tmp_path / "cli.onnx"
    code = cli.main(["export", str(checkpoints["simple_v3"]), "--format", "onnx",
                     "--output", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0
    assert "max abs diff vs eager" in stdout and "verified ok" in stdout
    assert str(out) in stdout and out.is_file()


def test_cli_bad_checkpoint_is_one_line(tmp_path, capsys):
    code = cli.main(["export", str(tmp_path / "missing.pt"), "--format", "torchscript"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("imgcls: error:") and "missing.pt" in err
    assert len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- benchmark


def test_benchmark_quick_runs(capsys):
    argv = ["--quick", "--models", "simple_v3", "--batches", "1", "--repeats", "1",
            "--seconds", "0.01"]
    results = _benchmark_module().main(argv)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == results
    row = results["simple_v3"]["b1"]
    assert row["eager_img_s"] > 0 and row["onnx_img_s"] > 0
    # the rates are printed to 0.1 img/s: on a busy machine (a few img/s) that rounding alone
    # moves their quotient by more than 1%, so the ratio is checked within it
    low = (row["onnx_img_s"] - 0.05) / (row["eager_img_s"] + 0.05)
    high = (row["onnx_img_s"] + 0.05) / (row["eager_img_s"] - 0.05)
    assert low * 0.999 <= row["ratio"] <= high * 1.001
