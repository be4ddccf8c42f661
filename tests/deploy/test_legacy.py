"""Old model files as the tutorials save them: plain state_dicts and whole-model pickles, turned
into imgcls checkpoints that evaluate/predict/export read safely; pickles only when trusted, and
never a line of an untrusted pickle run."""

from __future__ import annotations

import contextlib
import importlib
import logging
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

from imgcls import api
from imgcls.cli import main
from imgcls.data.cifar import MEAN_STD
from imgcls.deploy import load as inference
from imgcls.deploy.legacy import convert, read_any_checkpoint
from imgcls.errors import ImgclsError
from imgcls.runs.checkpoint import load_checkpoint

# The tutorials' classes, written as the tutorials write them (the constructor arguments, with
# the tutorials' values as defaults, only let one test vary channels and classes).
TUTORIAL_SOURCE = textwrap.dedent('''
    import torch
    import torch.nn as nn
    import torch.nn.functional as F


    class Net(nn.Module):
        def __init__(self, in_channels=3, num_classes=10):
            super().__init__()
            self.conv1 = nn.Conv2d(in_channels, 6, 5)
            self.pool = nn.MaxPool2d(2, 2)
            self.conv2 = nn.Conv2d(6, 16, 5)
            self.fc1 = nn.Linear(16 * 5 * 5, 120)
            self.fc2 = nn.Linear(120, 84)
            self.fc3 = nn.Linear(84, num_classes)

        def forward(self, x):
            x = self.pool(F.relu(self.conv1(x)))
            x = self.pool(F.relu(self.conv2(x)))
            x = torch.flatten(x, 1)
            x = F.relu(self.fc1(x))
            x = F.relu(self.fc2(x))
            x = self.fc3(x)
            return x


    class CIFAR10_Network(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.model = nn.Sequential(
                nn.Conv2d(3, 32, 5, padding=2),
                nn.MaxPool2d(2),
                nn.Conv2d(32, 32, 5, padding=2),
                nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 5, padding=2),
                nn.MaxPool2d(2),
                nn.Flatten(),
                nn.Linear(64 * 4 * 4, 64),
                nn.Linear(64, num_classes),
            )

        def forward(self, x):
            x = self.model(x)
            return x


    class CIFAR10_Net_Simple_v3(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.model = nn.Sequential(
                nn.Conv2d(3, 32, 3, 1, 1),
                nn.ReLU(inplace=True),
                nn.BatchNorm2d(32),
                nn.Conv2d(32, 32, 3, 1, 1),
                nn.ReLU(inplace=True),
                nn.BatchNorm2d(32),
                nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 3, 1, 1),
                nn.ReLU(inplace=True),
                nn.BatchNorm2d(64),
                nn.Conv2d(64, 64, 3, 1, 1),
                nn.ReLU(inplace=True),
                nn.BatchNorm2d(64),
                nn.MaxPool2d(2),
                nn.Conv2d(64, 128, 3, 1, 1),
                nn.ReLU(inplace=True),
                nn.BatchNorm2d(128),
                nn.Conv2d(128, 128, 3, 1, 1),
                nn.ReLU(inplace=True),
                nn.BatchNorm2d(128),
                nn.MaxPool2d(2),
                nn.Flatten(),
                nn.Dropout(0.4),
                nn.Linear(128 * 4 * 4, 64),
                nn.ReLU(inplace=True),
                nn.Dropout(0.4),
                nn.Linear(64, num_classes),
            )

        def forward(self, x):
            x = self.model(x)
            return x


    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)
''')

MODULE = "util.CIFAR10_Net_Simple_v3"  # where the tutorial keeps its class


@contextlib.contextmanager
def tutorial_module(root: Path) -> Iterator[ModuleType]:
    """Import ``util/CIFAR10_Net_Simple_v3.py`` from ``root``; afterwards it is gone again
    (sys.modules and sys.path), as it is on a machine that only has the saved file."""
    package = root / "util"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "CIFAR10_Net_Simple_v3.py").write_text(TUTORIAL_SOURCE)
    importlib.invalidate_caches()
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module(MODULE)
    finally:
        sys.path.remove(str(root))
        for name in [n for n in sys.modules if n == "util" or n.startswith("util.")]:
            del sys.modules[name]
    with pytest.raises(ImportError):
        importlib.import_module(MODULE)


def settle(model: nn.Module) -> nn.Module:
    """Give BatchNorm non-trivial running statistics, then switch to eval mode."""
    torch.manual_seed(1)
    with torch.no_grad():
        model.train()(torch.randn(8, 3, 32, 32) * 2 + 0.5)
    return model.eval()


def assert_same_outputs(original: nn.Module, converted: str | Path, channels: int = 3,
                        size: int = 32, **load_kwargs: object) -> inference.LoadedModel:
    loaded = inference.load_model(converted, **load_kwargs)
    x = torch.randn(4, channels, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), original.eval()(x), rtol=0, atol=0)
    return loaded


class Payload:
    """What a malicious pickle does: anything, the moment it is loaded (here: make a file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def simple_v3_pickle(tmp_path) -> tuple[nn.Module, Path]:
    """A whole-model pickle of the tutorial's CIFAR10_Net_Simple_v3 (the class gone afterwards);
    ``old_format.pth`` beside it holds the same in torch.save's format before PyTorch 1.6."""
    with tutorial_module(tmp_path / "scripts") as tutorial:
        model = settle(tutorial.CIFAR10_Net_Simple_v3())
        path = tmp_path / "simple_v3_whole.pth"
        torch.save(model, path)
        torch.save(model, tmp_path / "old_format.pth", _use_new_zipfile_serialization=False)
    return model, path


@pytest.fixture
def evil_pickle(tmp_path) -> tuple[Path, Path]:
    """A whole-model pickle that also creates a marker file when unpickled."""
    marker = tmp_path / "PAYLOAD_RAN"
    with tutorial_module(tmp_path / "scripts") as tutorial:
        model = tutorial.Net()
        model.note = Payload(marker)  # pickled with the model, run when it is loaded
        path = tmp_path / "evil.pth"
        torch.save(model, path)
    return path, marker


def one_line_error(code: int, err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("imgcls: error: "), err
    return lines[0]


# ---------------------------------------------------------------- plain state_dicts


@pytest.mark.parametrize(
    ("cls_name", "kwargs", "model_name", "channels", "num_classes", "wrap"),
    [
        ("Net", {}, "lenet", 3, 10, None),
        ("Net", {"in_channels": 1, "num_classes": 7}, "lenet", 1, 7, "state_dict"),
        ("CIFAR10_Network", {"num_classes": 4}, "cifar10_net", 3, 4, "model"),
        ("CIFAR10_Net_Simple_v3", {}, "simple_v3", 3, 10, "module."),
    ],
)
def test_state_dict_is_recognised_and_converted(tmp_path, cls_name, kwargs, model_name,
                                                channels, num_classes, wrap):
    with tutorial_module(tmp_path / "scripts") as tutorial:
        model = getattr(tutorial, cls_name)(**kwargs)
    if channels == 3:
        settle(model)
    state = model.state_dict()
    if wrap == "module.":  # saved from nn.DataParallel
        state = {f"module.{k}": v for k, v in state.items()}
    elif wrap is not None:  # inside a training script's own checkpoint dict
        state = {wrap: state, "epoch": 12, "acc": 0.71}
    source = tmp_path / "weights.pth"
    torch.save(state, source)

    out = convert(source)
    assert out == tmp_path / "weights.imgcls.pt"
    record = load_checkpoint(out)  # weights_only=True: the converted file runs no code
    assert record["config"]["model"]["name"] == model_name
    assert record["in_channels"] == channels == record["config"]["model"]["in_channels"]
    assert record["classes"] == [str(i) for i in range(num_classes)]
    assert record["input_size"] == 32 and record["mean"] is None and record["std"] is None
    assert record["provenance"] == {"converted_from": str(source)}
    assert "optimizer" not in record and record["epoch"] is None
    loaded = assert_same_outputs(model, out, channels=channels)
    assert loaded.mean_std is None


def test_cli_convert_then_evaluate(tmp_path, capsys, make_cifar_batches):
    with tutorial_module(tmp_path / "scripts") as tutorial:
        model = tutorial.Net()
    source = tmp_path / "cifar_net.pth"
    torch.save(model.state_dict(), source)
    data = make_cifar_batches(tmp_path / "data", n_train=50, n_test=10)
    names = ",".join(f"class_{k}" for k in range(10))
    out = tmp_path / "converted.pt"

    code = main(["convert", str(source), "--output", str(out), "--classes", names,
                 "--normalize", "cifar10"])
    assert code == 0 and f"wrote {out}" in capsys.readouterr().out
    record = load_checkpoint(out)
    assert record["classes"][0] == "class_0"
    assert (record["mean"], record["std"]) == tuple(map(list, MEAN_STD["cifar10"]))
    assert record["config"]["transforms"]["normalize"] == "custom"
    assert record["config"]["transforms"]["mean"] == list(MEAN_STD["cifar10"][0])

    code = main(["evaluate", str(out), "--data", str(data), "--split", "test", "--json",
                 "--output", str(tmp_path / "eval"), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert '"n": 10' in captured.out
    assert (tmp_path / "eval" / "metrics.json").exists()


def test_torchvision_state_dict_needs_model_name(tmp_path):
    from torchvision.models import resnet18

    model = resnet18(num_classes=5).eval()
    source = tmp_path / "resnet.pth"
    torch.save(model.state_dict(), source)

    with pytest.raises(ImgclsError, match="--model NAME"):
        convert(source)
    with pytest.raises(ImgclsError, match=r"does not fit model resnet34: .*missing layer1\.2"):
        convert(source, model="resnet34")
    with pytest.raises(ImgclsError, match="unknown model 'resnet81'.*resnet18"):
        convert(source, model="resnet81")

    out = convert(source, tmp_path / "r18.pt", model="resnet18", normalize="imagenet",
                  input_size=64, classes=list("abcde"))
    loaded = assert_same_outputs(model, out, size=64)
    assert loaded.classes == list("abcde") and loaded.input_size == 64
    assert loaded.mean_std == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def test_class_names_must_fit_the_model(tmp_path):
    with tutorial_module(tmp_path / "scripts") as tutorial:
        model = tutorial.Net()
    source = tmp_path / "net.pth"
    torch.save(model.state_dict(), source)
    with pytest.raises(ImgclsError, match="names 3 classes.*has 10 outputs"):
        convert(source, classes=["cat", "dog", "bird"])
    with pytest.raises(ImgclsError, match="--num-classes 4.*10 outputs"):
        convert(source, num_classes=4)
    with pytest.raises(ImgclsError, match="--input-size 64 does not suit lenet"):
        convert(source, input_size=64)
    assert not (tmp_path / "net.imgcls.pt").exists()


def test_not_a_model_file(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("not a model")
    with pytest.raises(ImgclsError, match="not a file written by torch.save"):
        convert(text)
    numbers = tmp_path / "numbers.pth"
    torch.save({"epoch": 3, "lr": 0.1}, numbers)
    with pytest.raises(ImgclsError, match="holds no model weights"):
        convert(numbers)
    with pytest.raises(ImgclsError, match="not found"):
        convert(tmp_path / "missing.pth")


# ---------------------------------------------------------------- whole-model pickles


def test_untrusted_pickle_is_refused_and_never_runs(evil_pickle, capsys):
    path, marker = evil_pickle
    line = one_line_error(main(["convert", str(path)]), capsys.readouterr().err)
    assert "--trust-pickle" in line and str(path) in line
    one_line_error(main(["evaluate", str(path)]), capsys.readouterr().err)
    one_line_error(main(["predict", str(path), str(path)]), capsys.readouterr().err)
    with pytest.raises(ImgclsError):
        read_any_checkpoint(path, trust_pickle=False)
    with pytest.raises(ImgclsError):
        inference.load_model(path)
    assert not marker.exists()
    assert not path.with_name("evil.imgcls.pt").exists()


def test_untrusted_old_format_pickle_is_refused(tmp_path, capsys):
    marker = tmp_path / "PAYLOAD_RAN"
    path = tmp_path / "old.pth"
    torch.save({"model": nn.Linear(2, 2), "x": Payload(marker)}, path,
               _use_new_zipfile_serialization=False)
    line = one_line_error(main(["convert", str(path)]), capsys.readouterr().err)
    assert "--trust-pickle" in line
    assert not marker.exists()


@pytest.mark.parametrize("zip_format", [True, False])
def test_trusted_pickle_converts_with_a_warning(simple_v3_pickle, capsys, caplog, zip_format):
    model, path = simple_v3_pickle
    if not zip_format:
        path = path.with_name("old_format.pth")
    with caplog.at_level(logging.WARNING, logger="imgcls"):
        code = main(["convert", str(path), "--trust-pickle"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "runs code from the file" in captured.err
    assert any(r.levelno == logging.WARNING and "runs code" in r.getMessage()
               for r in caplog.records)
    out = path.with_name(path.stem + ".imgcls.pt")
    record = load_checkpoint(out)
    assert record["config"]["model"]["name"] == "simple_v3"
    assert record["classes"] == [str(i) for i in range(10)]
    assert_same_outputs(model, out)


def test_trusted_pickle_from_main_script(tmp_path, monkeypatch):
    """``python train.py`` pickles its classes as ``__main__.Net``."""
    with tutorial_module(tmp_path / "scripts") as tutorial:
        cls = tutorial.Net
        monkeypatch.setattr(cls, "__module__", "__main__")
        monkeypatch.setattr(sys.modules["__main__"], "Net", cls, raising=False)
        model = cls(num_classes=3)
        path = tmp_path / "lenet_whole.pth"
        torch.save(model, path)
        monkeypatch.delattr(sys.modules["__main__"], "Net")
    assert "__main__.Net" in torch.serialization.get_unsafe_globals_in_checkpoint(path)
    out = convert(path, trust_pickle=True, classes=["a", "b", "c"])
    loaded = assert_same_outputs(model, out)
    assert loaded.classes == ["a", "b", "c"]


def test_read_any_checkpoint(simple_v3_pickle, tmp_path, capsys):
    model, path = simple_v3_pickle
    # with trust, a pickle is converted in memory and evaluate/predict/export can use it
    record = read_any_checkpoint(path, trust_pickle=True)
    assert record.config["model"]["name"] == "simple_v3" and not record.resumable
    assert "runs code" in capsys.readouterr().err
    assert_same_outputs(model, path, trust_pickle=True)
    capsys.readouterr()

    # an imgcls checkpoint is simply loaded: no warning, nothing converted
    out = convert(path, tmp_path / "safe.pt", trust_pickle=True)
    capsys.readouterr()
    again = read_any_checkpoint(out, trust_pickle=True)
    assert capsys.readouterr().err == ""
    assert again.to_payload().keys() | {"format", "version"} == load_checkpoint(out).keys()
    assert all(torch.equal(again.model[k], v) for k, v in record.model.items())
    with pytest.raises(ImgclsError, match="already an imgcls checkpoint"):
        convert(out, tmp_path / "twice.pt")


def test_trusted_pickle_of_an_unknown_class(tmp_path):
    with tutorial_module(tmp_path / "scripts") as tutorial:
        path = tmp_path / "custom.pth"
        torch.save(tutorial.Custom(), path)
    needs = re.escape(f"needs class {MODULE}.Custom")
    with pytest.raises(ImgclsError, match=f"{needs}.*where it is importable"):
        convert(path, trust_pickle=True)
    with pytest.raises(ImgclsError, match=needs):
        read_any_checkpoint(path, trust_pickle=True)


def test_trusted_pickle_of_a_torchvision_model_is_recognised(tmp_path):
    from torchvision.models import resnet18

    model = resnet18(num_classes=3).eval()
    path = tmp_path / "resnet_whole.pth"
    torch.save(model, path)
    out = convert(path, trust_pickle=True, normalize="imagenet")
    loaded = assert_same_outputs(model, out, size=64)
    assert loaded.config.model.name == "resnet18"


# ---------------------------------------------------------------- what a converted file is not


def test_resume_from_converted_checkpoint_is_a_clear_error(tmp_path):
    with tutorial_module(tmp_path / "scripts") as tutorial:
        model = tutorial.Net()
    source = tmp_path / "net.pth"
    torch.save(model.state_dict(), source)
    out = convert(source)
    with pytest.raises(ImgclsError):
        api.train(resume=out, overrides={"log.output": str(tmp_path / "runs")})
