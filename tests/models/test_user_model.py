"""Your own network: ``model.name=FILE.py:CLASS`` or ``MODULE:CLASS`` through train, resume,
evaluate, predict, export and the model summary, and the one-line errors when it goes wrong."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import torch

from imgcls import api
from imgcls.cli import main
from imgcls.config import ModelConfig, build_config
from imgcls.deploy import predict
from imgcls.deploy.export import export_checkpoint
from imgcls.errors import ImgclsError
from imgcls.models import create_model, get_model_info
from imgcls.models.user import CodeConsent
from imgcls.runs.checkpoint import load_checkpoint

# Seed 000's network, as the PyTorch tutorial writes it: no num_classes, 10 outputs hard-coded.
TUTORIAL_NET = textwrap.dedent("""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F


    class Net(nn.Module):
        def __init__(self):
            super(Net, self).__init__()
            self.conv1 = nn.Conv2d(3, 6, 5)
            self.pool = nn.MaxPool2d(2, 2)
            self.conv2 = nn.Conv2d(6, 16, 5)
            self.fc1 = nn.Linear(16 * 5 * 5, 120)
            self.fc2 = nn.Linear(120, 84)
            self.fc3 = nn.Linear(84, 10)

        def forward(self, x):
            x = self.pool(F.relu(self.conv1(x)))
            x = self.pool(F.relu(self.conv2(x)))
            x = x.view(-1, 16 * 5 * 5)
            x = F.relu(self.fc1(x))
            x = F.relu(self.fc2(x))
            x = self.fc3(x)
            return x


    class Wide(nn.Module):
        input_size = 16

        def __init__(self, num_classes, width=4):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.head = nn.Linear(width, num_classes)

        def forward(self, x):
            return self.head(self.body(x))


    def not_a_model():
        return 0
""")


@pytest.fixture
def net_file(tmp_path) -> Path:
    path = tmp_path / "code" / "my_nets.py"
    path.parent.mkdir()
    path.write_text(TUTORIAL_NET)
    return path


def _cfg(tmp_path: Path, data: Path, model: str, **extra: object):
    values = {"data.source": str(data), "model.name": model, "train.epochs": 2,
              "loader.batch_size": 8, "optim.lr": 0.02, "sched.warmup_epochs": 0.0,
              "log.progress": "off", "log.output": str(tmp_path / "runs"), "log.name": "mine"}
    values.update(extra)
    return build_config(overrides=values)


def test_the_tutorials_net_trains_resumes_and_is_used_elsewhere(tmp_path, net_file,
                                                                make_image_folder, capsys,
                                                                monkeypatch):
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=8, size=32)
    monkeypatch.chdir(net_file.parent)  # a relative path, as a user types it
    result = api.train(_cfg(tmp_path, data, "my_nets.py:Net"))
    err = capsys.readouterr().err
    assert "fc3 (84 -> 10) is replaced by one with 3 outputs" in err
    assert "train.channels_last=false" in err  # the tutorial flattens with .view()
    ckpt = load_checkpoint(result.run_dir / "checkpoints" / "last.pt")
    assert ckpt["config"]["model"]["name"] == f"{net_file}:Net"  # absolute: found from anywhere
    assert ckpt["model"]["fc3.weight"].shape == (3, 84)

    monkeypatch.chdir(tmp_path)
    code = CodeConsent(model_code=f"{net_file}:Net")  # the user names the code again
    more = api.train(resume=result.run_dir, overrides={"train.epochs": 3}, code=code)
    assert more.epochs == 3
    best = result.run_dir / "checkpoints" / "best.pt"
    summary = api.evaluate_checkpoint(best, code=code)
    assert summary["n"] > 0
    assert "rebuilding the model from" in capsys.readouterr().err
    report = predict.predict(best, [data / "a"], top_k=1, device="cpu", code=code)
    assert not report.failed and report.results[0].top[0][0] in ("a", "b", "c")
    assert export_checkpoint(best, fmt="torchscript", output=tmp_path / "m.pt",
                             code=code).max_abs_diff < 1e-4

    # the file is changed (refused unless trusted, then it no longer fits the weights), or
    # gone: one line each
    net_file.write_text(TUTORIAL_NET.replace("nn.Linear(120, 84)", "nn.Linear(120, 80)")
                        .replace("nn.Linear(84, 10)", "nn.Linear(80, 10)"))
    assert main(["evaluate", str(best), "--model-code", f"{net_file}:Net"]) == 2
    assert "differs from the one" in capsys.readouterr().err
    assert main(["evaluate", str(best), "--trust-code"]) == 2
    assert "does not fit the model" in capsys.readouterr().err
    net_file.unlink()
    assert main(["evaluate", str(best), "--trust-code"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not found" in err and str(net_file) in err and len(err.splitlines()) <= 2


def test_num_classes_and_kwargs_reach_the_constructor(tmp_path, net_file, make_image_folder):
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=6, size=32)
    name = f"{net_file}:Wide"
    assert get_model_info(name).input_size == 16  # the class attribute
    cfg = _cfg(tmp_path, data, name, **{"model.kwargs": {"width": 6}})
    result = api.train(cfg)
    ckpt = load_checkpoint(result.run_dir / "checkpoints" / "last.pt")
    assert ckpt["model"]["head.weight"].shape == (2, 6) and ckpt["input_size"] == 16


def test_a_module_class(tmp_path):
    model = create_model(ModelConfig(name="imgcls.models.seed_cnns:LeNet"), 4)
    assert model.fc3.out_features == 4
    assert sum(p.numel() for p in model.parameters()) == 62006 - 6 * 84 - 6


@pytest.mark.parametrize("name,needle", [
    ("{file}:Missing", "has no nn.Module class 'Missing' (it defines: Net, Wide)"),
    ("{file}:not_a_model", "has no nn.Module class 'not_a_model'"),
    ("{dir}/nowhere.py:Net", "not found"),
    ("no_such_module_xyz:Net", "cannot import module no_such_module_xyz"),
    ("{file}:", "expected path/to/file.py:ClassName"),
])
def test_bad_names_are_one_line(tmp_path, net_file, capsys, name, needle):
    name = name.format(file=net_file, dir=net_file.parent)
    with pytest.raises(ImgclsError, match=None) as info:
        create_model(ModelConfig(name=name), 3)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_bad_kwargs_and_broken_files(tmp_path, net_file):
    with pytest.raises(ImgclsError, match=r"Wide\(width, num_classes, in_channels\)|failed"):
        create_model(ModelConfig(name=f"{net_file}:Wide", kwargs={"depth": 3}), 3)
    broken = net_file.with_name("broken.py")
    broken.write_text("import torch\nraise RuntimeError('boom')\n")
    with pytest.raises(ImgclsError, match="importing .*broken.py failed: RuntimeError: boom"):
        create_model(ModelConfig(name=f"{broken}:Net"), 3)
    with pytest.raises(ImgclsError, match="model.kwargs is for your own model class"):
        create_model(ModelConfig(name="lenet", kwargs={"width": 2}), 3)


def test_summary_of_a_user_class(net_file, capsys):
    assert main(["models", f"{net_file}:Net", "--num-classes", "10"]) == 0
    out = capsys.readouterr().out
    assert "62,006" in out.replace(" ", "") or "62006" in out.replace(",", "")


def test_checkpoint_loading_runs_no_code_of_its_own(tmp_path, net_file, make_image_folder):
    # the class comes from the named file; the checkpoint itself is plain data
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=4, size=32)
    result = api.train(_cfg(tmp_path, data, f"{net_file}:Net", **{"train.epochs": 1}))
    path = result.run_dir / "checkpoints" / "last.pt"
    assert not torch.serialization.get_unsafe_globals_in_checkpoint(path)
    assert os.path.getsize(path) > 0
