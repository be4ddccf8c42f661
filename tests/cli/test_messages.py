"""Errors are one short line that names the thing at fault, whatever went wrong: a YAML alias bomb,
a full disk mid-save, a truncated checkpoint, file names that are not UTF-8 (issue 13, item 7)."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import _make_image_folder, run_cli

import imgcls.runs.checkpoint as checkpoint_module
from imgcls import api, files
from imgcls.cli.messages import MAX_ERROR_CHARS, one_line
from imgcls.config import build_config, load_yaml, save_yaml
from imgcls.data.splits import make_record, save_split
from imgcls.deploy.export import _write_atomic as export_write
from imgcls.deploy.predict import PredictReport, PredictResult, write_csv
from imgcls.errors import DiskFullError, ImgclsError, short_repr
from imgcls.runs.checkpoint import copy_checkpoint, load_checkpoint, save_checkpoint

SHORT = 300  # what "one short line" means here
DISK_FULL = [errno.ENOSPC, errno.EDQUOT, errno.EFBIG]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A one-epoch LeNet run: checkpoints/last.pt and best.pt."""
    root = tmp_path_factory.mktemp("messages")
    data = _make_image_folder(root / "imgs", classes=("ants", "bees"), per_class=8, size=32)
    result = api.train(build_config(overrides={
        "data.source": str(data), "model.name": "lenet", "train.epochs": 1,
        "loader.batch_size": 16, "sched.warmup_epochs": 0.0, "log.output": str(root / "runs"),
        "log.name": "run", "log.progress": "off", "log.tensorboard": False,
    }))
    return result.run_dir


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A copy of the trained run this test may damage."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def error_line(code: int, err: str) -> str:
    """The one `imgcls: error:` line of a failed command (other stderr lines are progress)."""
    lines = [ln for ln in err.splitlines() if ln.startswith("imgcls: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert len(lines[0]) <= SHORT, lines[0][:1000]
    return lines[0]


# --------------------------------------------------------------------------- values in messages


def bomb(depth: int) -> str:
    """YAML for a list whose last item is 9**depth strings in a few hundred bytes."""
    levels = ["&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, depth)]
    return f"[{', '.join(levels)}]"


def test_short_repr_is_bounded_for_any_size():
    shared: Any = ["lol"] * 9
    for _ in range(12):  # 9**12 items: walking it all would take hours
        shared = [shared] * 9
    for value in (list(range(10**6)), "x" * 10**6, {str(i): [i] * 100 for i in range(10**4)},
                  shared, ("a", b"b" * 1000, 1.5)):
        start = time.perf_counter()
        text = short_repr(value)
        assert len(text) <= 200 and time.perf_counter() - start < 0.5
    assert short_repr([1, 2]) == "[1, 2]"  # small values and paths are shown whole
    assert short_repr("/data/" + "p" * 140) == repr("/data/" + "p" * 140)


@pytest.mark.parametrize("key", ["model.kwargs", "transforms.crop_padding", "model.freeze",
                                 "optim.class_weights"])
def test_yaml_alias_bomb_fails_fast_in_one_short_line(tmp_path, capsys, key):
    section, name = key.split(".")
    value = bomb(9)  # 387 million strings
    if name == "kwargs":
        value = f"{{layers: {value}}}"
    path = tmp_path / "bomb.yaml"
    path.write_text(f"{section}:\n  {name}: {value}\n")
    assert path.stat().st_size < 1000
    start = time.perf_counter()
    code, _, err = run_cli(capsys, "train", "--config", str(path), "--print-config")
    line = error_line(code, err)
    assert str(path) in line and "aliases" in line
    code, _, err = run_cli(capsys, "train", "--print-config", f"{key}={value}")
    assert key in error_line(code, err)
    assert time.perf_counter() - start < 10


def test_a_value_that_contains_itself_or_nests_too_deep_is_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("model:\n  kwargs: &a {self: *a}\n")
    with pytest.raises(ImgclsError, match="contains itself"):
        load_yaml(path)
    path.write_text("model:\n  kwargs: {a: " + "[" * 5000 + "]" * 5000 + "}\n")
    with pytest.raises(ImgclsError, match="nested too deeply"):
        load_yaml(path)


def test_config_values_are_abbreviated_in_messages(tmp_path):
    small_bomb = tmp_path / "small.yaml"  # 6561 values: under the limit, still never shown whole
    small_bomb.write_text(f"model:\n  freeze: {bomb(4)}\n")
    huge = "x" * 100_000
    cases: list[Callable[[], object]] = [
        lambda: build_config(load_yaml(small_bomb)),
        lambda: build_config(overrides={"optim.class_weights": [[0.5] * 1000] * 1000}),
        lambda: build_config(overrides={"train.device": huge}),
        lambda: build_config(overrides={"optim.lr": [huge]}),
        lambda: build_config(overrides={f"optim.{huge}": 1}),
        lambda: build_config({"optim": list(range(10**5))}),
    ]
    for case in cases:
        with pytest.raises(ImgclsError) as info:
            case()
        assert len(str(info.value)) <= SHORT and "\n" not in str(info.value), str(info.value)[:500]


def test_the_command_line_caps_any_error_line():
    line = one_line(ImgclsError("bad value " + "x" * 10**6))
    assert len(line) <= MAX_ERROR_CHARS and line.startswith("bad value x")


# --------------------------------------------------------------------------- full disk


class FillingDisk(io.RawIOBase):
    """A file on a disk with ``room`` bytes left: the write that passes it writes what fits,
    then raises OSError(``code``), as the kernel does."""

    def __init__(self, handle: Any, room: int, code: int) -> None:
        super().__init__()
        self.handle, self.room, self.code = handle, room, code

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = memoryview(data).cast("B")
        if len(chunk) > self.room:
            self.handle.write(chunk[: self.room])
            self.room = 0
            raise OSError(self.code, os.strerror(self.code))
        self.room -= len(chunk)
        return self.handle.write(chunk)


def fill_disk_during_checkpoint_writes(monkeypatch, room: int, code: int = errno.ENOSPC) -> None:
    real = files.atomic_write
    monkeypatch.setattr(checkpoint_module, "atomic_write", lambda path, write: real(
        path, lambda handle: write(FillingDisk(handle, room, code))))


@pytest.mark.parametrize("code", DISK_FULL, ids=errno.errorcode.get)
def test_disk_full_mid_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch, code):
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint({"epoch": 1, "weights": list(range(100))}, path)
    before = path.read_bytes()
    fill_disk_during_checkpoint_writes(monkeypatch, room=len(before) // 2, code=code)
    for write in (lambda: save_checkpoint({"epoch": 2, "weights": list(range(10**4))}, path),
                  lambda: copy_checkpoint(path, path.with_name("best.pt"))):
        with pytest.raises(DiskFullError) as info:  # torch.save raised a RuntimeError
            write()
        message = str(info.value)
        assert "disk full" in message and str(path.parent) in message and "\n" not in message
        assert isinstance(info.value, OSError) and info.value.errno == code  # caches shrug it off
    monkeypatch.undo()
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no .tmp left
    assert path.read_bytes() == before and load_checkpoint(path)["epoch"] == 1


def test_disk_full_in_every_writer_names_the_file(tmp_path, monkeypatch):
    def no_space(fd: int) -> None:  # where NFS and delayed allocation report a full disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    record = make_record("data", "files", 0, 0.5, ["a"], ["x.png"], ["y.png"])
    report = PredictReport("ckpt.pt", ["a"], [PredictResult("x.png", [("a", 1.0)])])
    writers: dict[str, Callable[[Path], object]] = {
        "config.yaml": lambda p: save_yaml(build_config(), p),
        "split.json": lambda p: save_split(record, p),
        "last.pt": lambda p: save_checkpoint({"epoch": 1}, p),
        "out.csv": lambda p: write_csv(report, p),
        "model.onnx": lambda p: export_write(p, lambda tmp: tmp.write_bytes(b"x")),
    }
    for name, write in writers.items():
        path = tmp_path / name
        path.write_bytes(b"old")
        monkeypatch.setattr(files.os, "fsync", no_space)
        with pytest.raises(ImgclsError) as info:
            write(path)
        monkeypatch.undo()
        assert str(path) in str(info.value) and "disk full" in str(info.value), name
        assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(writers)


def test_training_on_a_full_disk_stops_with_one_line(run, monkeypatch, capsys):
    last = run / "checkpoints" / "last.pt"
    before = last.read_bytes()
    fill_disk_during_checkpoint_writes(monkeypatch, room=len(before) // 2)
    code, _, err = run_cli(capsys, "train", "--resume", str(run), "train.epochs=2")
    line = error_line(code, err)
    assert "disk full" in line and str(last) in line
    assert last.read_bytes() == before  # epoch 1 is still there to resume from
    assert sorted(p.name for p in last.parent.iterdir()) == ["best.pt", "last.pt"]


# --------------------------------------------------------------------------- damaged checkpoints


@pytest.mark.parametrize(("size", "word"), [(0.5, "truncated"), (0.0, "empty")])
def test_truncated_or_empty_checkpoint_points_at_the_other(run, capsys, size, word):
    folder = run / "checkpoints"
    for name, other in (("last.pt", "best.pt"), ("best.pt", "last.pt")):
        path = folder / name
        original = path.read_bytes()
        path.write_bytes(original[: int(len(original) * size)])
        with pytest.raises(ImgclsError) as info:
            load_checkpoint(path)
        assert word in str(info.value) and f"try {folder / other}" in str(info.value)
        path.write_bytes(original)
    last, best = folder / "last.pt", folder / "best.pt"
    whole = best.read_bytes()
    best.write_bytes(whole[: int(len(whole) * size)])
    code, _, err = run_cli(capsys, "evaluate", str(best))
    line = error_line(code, err)
    assert word in line and str(best) in line and f"try {last}" in line
    best.write_bytes(whole)
    last.write_bytes(last.read_bytes()[: int(last.stat().st_size * size)])
    code, _, err = run_cli(capsys, "train", "--resume", str(run), "train.epochs=2")
    line = error_line(code, err)
    assert word in line and str(last) in line and f"try {best}" in line
    best.write_bytes(whole[:100])  # both damaged: no advice to try the other
    with pytest.raises(ImgclsError, match=word) as info:
        load_checkpoint(last)
    assert "try" not in str(info.value)
    alone = run / "copy.pt"  # not part of a run: nothing else to suggest
    alone.write_bytes(b"")
    with pytest.raises(ImgclsError, match="empty") as info:
        load_checkpoint(alone)
    assert "try" not in str(info.value)


# --------------------------------------------------------------------------- file names


def test_predict_prints_and_writes_non_utf8_file_names(trained, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    png = next((trained.parent.parent / "imgs" / "bees").glob("*.png"))
    bad = folder / os.fsdecode(b"bee_\xff\xfe.png")
    try:
        shutil.copy(png, bad)
    except (OSError, UnicodeError):
        pytest.skip("this file system only takes UTF-8 file names")
    shutil.copy(png, folder / "plain.png")
    ckpt = str(trained / "checkpoints" / "best.pt")
    out = tmp_path / "x.csv"
    code, table, err = run_cli(capsys, "predict", ckpt, str(folder), "--csv", str(out))
    assert code == 0, err
    shown = str(folder / "bee_\ufffd\ufffd.png")
    assert shown in table and "plain.png" in table
    rows = list(csv.DictReader(out.read_bytes().decode("utf-8").splitlines()))  # strict UTF-8
    assert {r["path"] for r in rows} == {shown, str(folder / "plain.png")}
    code, text, err = run_cli(capsys, "predict", ckpt, str(bad), "--json")
    assert code == 0, err
    assert [p["path"] for p in json.loads(text)["predictions"]] == [shown]


def test_check_data_page_shows_non_utf8_file_names(tmp_path, capsys):
    data = _make_image_folder(tmp_path / "data", per_class=4, size=32)
    try:
        (data / "ants" / os.fsdecode(b"ant_\xff.png")).write_bytes(b"not an image")
    except (OSError, UnicodeError):
        pytest.skip("this file system only takes UTF-8 file names")
    code, _, err = run_cli(capsys, "check-data", str(data), "--output", str(tmp_path / "out"))
    assert code in (0, 1) and "Traceback" not in err, err
    assert "ant_\ufffd.png" in (tmp_path / "out" / "index.html").read_bytes().decode("utf-8")
