"""A checkpoint never makes imgcls import code: a run of the user's own model class is rebuilt
only when the command line names that code (``--model-code``, checked against the class and the
file hash the checkpoint records) or trusts it (``--trust-code``). The planted marker file shows
whether the named module ran."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import assert_one_line_error, run_cli

from imgcls import api
from imgcls.config import build_config
from imgcls.deploy.load import load_model
from imgcls.errors import ImgclsError
from imgcls.models.user import CodeConsent
from imgcls.runs.checkpoint import load_checkpoint

NET = textwrap.dedent("""
    import pathlib

    from torch import nn

    pathlib.Path({marker!r}).write_text("imported")  # the code a hostile config would run


    class Net(nn.Module):
        def __init__(self, num_classes):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                      nn.Flatten())
            self.head = nn.Linear(4, num_classes)

        def forward(self, x):
            return self.head(self.body(x))
""")


def _train(tmp_path: Path, data: Path, model: str, epochs: int = 1) -> Path:
    cfg = build_config(overrides={
        "data.source": str(data), "model.name": model, "train.epochs": epochs,
        "loader.batch_size": 8, "log.progress": "off", "log.output": str(tmp_path / "runs"),
        "log.name": "mine", "transforms.image_size": 16})
    return api.train(cfg).run_dir


@pytest.fixture
def user_run(tmp_path, make_image_folder):
    """A run of a class in a file; then the file is the one that plants a marker if run."""
    marker = tmp_path / "MARKER"
    net = tmp_path / "code" / "net.py"
    net.parent.mkdir()
    net.write_text(NET.format(marker=str(marker)))
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=6, size=16)
    run_dir = _train(tmp_path, data, f"{net}:Net")
    marker.unlink()  # training imported it, as the user asked
    sys.modules.pop(next(k for k in sys.modules if k.startswith("imgcls_user_net_")))
    return run_dir, net, marker, data


COMMANDS = [
    ("predict", "{best}", "{data}/a"),
    ("evaluate", "{best}"),
    ("export", "{best}", "--format", "torchscript"),
    ("report", "{run}"),
    ("train", "--resume", "{run}", "train.epochs=2"),
]


@pytest.mark.parametrize("argv", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_a_checkpoint_imports_nothing_unless_asked(user_run, capsys, argv):
    run_dir, net, marker, data = user_run
    best = run_dir / "checkpoints" / "best.pt"
    args = [a.format(best=best, run=run_dir, data=data) for a in argv]
    code, _, err = run_cli(capsys, *args)
    assert_one_line_error(code, err, f"{net}:Net", "nothing was imported",
                          f"--model-code {net}:Net", "--trust-code")
    assert not marker.exists()


def test_a_module_class_is_not_imported_unasked(tmp_path, make_image_folder, capsys,
                                                monkeypatch):
    marker = tmp_path / "MARKER"
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "hostile_net.py").write_text(NET.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=6, size=16)
    run_dir = _train(tmp_path, data, "hostile_net:Net")
    marker.unlink()
    monkeypatch.delitem(sys.modules, "hostile_net")
    capsys.readouterr()
    best = str(run_dir / "checkpoints" / "best.pt")
    code, _, err = run_cli(capsys, "evaluate", best)
    assert_one_line_error(code, err, "hostile_net:Net", "--model-code hostile_net:Net")
    assert not marker.exists()
    code, _, err = run_cli(capsys, "evaluate", best, "--model-code", "other_mod:Net")
    assert_one_line_error(code, err, "was trained with hostile_net:Net")
    assert not marker.exists()
    code, out, err = run_cli(capsys, "evaluate", best, "--model-code", "hostile_net:Net")
    assert code == 0, err
    assert marker.exists()  # named by the user: imported, as running their script would


def test_the_checkpoint_records_its_code_and_the_named_code_is_checked(user_run, capsys):
    run_dir, net, marker, data = user_run
    capsys.readouterr()
    best = run_dir / "checkpoints" / "best.pt"
    recorded = load_checkpoint(best)["model_code"]
    assert recorded["name"] == f"{net}:Net" and len(recorded["sha256"]) == 64

    # the same file, named again (even moved elsewhere): used
    moved = net.with_name("moved_net.py")
    moved.write_bytes(net.read_bytes())
    code, out, err = run_cli(capsys, "predict", str(best), str(data / "a"), "--model-code",
                             f"{moved}:Net")
    assert code == 0, err
    assert marker.exists()
    marker.unlink()
    # another class, or an edited file: refused before importing
    code, _, err = run_cli(capsys, "predict", str(best), str(data / "a"), "--model-code",
                           f"{net}:Other")
    assert_one_line_error(code, err, "was trained with class 'Net'", "not 'Other'")
    net.write_text(net.read_text() + "\n# edited\n")
    code, _, err = run_cli(capsys, "predict", str(best), str(data / "a"), "--model-code",
                           f"{net}:Net")
    assert_one_line_error(code, err, "the file differs from the one", "--trust-code")
    assert not marker.exists()
    # --trust-code: the user takes it as it is, and is told it changed
    code, _, err = run_cli(capsys, "predict", str(best), str(data / "a"), "--model-code",
                           f"{net}:Net", "--trust-code")
    assert code == 0 and "differs from the code" in err
    # a resumed run carries on with the code the user named
    loaded = load_model(best, code=CodeConsent(trust_code=True))
    assert loaded.config.model.name == f"{net}:Net"


def test_resume_of_a_run_killed_before_its_first_checkpoint(user_run, capsys):
    run_dir, net, marker, _ = user_run
    capsys.readouterr()
    (run_dir / "checkpoints" / "last.pt").unlink()
    (run_dir / "checkpoints" / "best.pt").unlink()  # only config.yaml is left to start over
    assert "net.py:Net" in yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["name"]
    code, _, err = run_cli(capsys, "train", "--resume", str(run_dir))
    assert_one_line_error(code, err, f"{run_dir}", "--model-code")
    assert not marker.exists()


def test_built_in_models_need_no_code_and_flags_are_checked(tmp_path, make_image_folder,
                                                            capsys):
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=6, size=16)
    run_dir = _train(tmp_path, data, "resnet20")
    capsys.readouterr()
    best = str(run_dir / "checkpoints" / "best.pt")
    assert load_checkpoint(best)["model_code"] == {}
    code, _, err = run_cli(capsys, "evaluate", best, "--model-code", "x.py:Net")
    assert_one_line_error(code, err, "imgcls's own model resnet20", "drop --model-code")
    code, _, err = run_cli(capsys, "train", "--data", "digits", "--trust-code")
    assert_one_line_error(code, err, "--resume")
    with pytest.raises(ImgclsError, match="no --model-code|drop --model-code"):
        load_model(best, code=CodeConsent(model_code="x.py:Net"))
