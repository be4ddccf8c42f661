"""data.max_image_pixels: an image whose header claims too many pixels (a 17 KB PNG of
12000x12000) is a bad image found from its header, never decoded, reported in one line naming the
file, with no PIL DecompressionBombWarning (issue 29, item 6b)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, run_cli
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from imgcls.config import DataConfig, build_config
from imgcls.data import create_datasets, load_rgb
from imgcls.data.folder import MAX_PIXELS, pixel_limit_error
from imgcls.datacheck.scan import decode
from imgcls.deploy import predict
from imgcls.errors import ImgclsError

FAST = ["--model", "lenet", "--batch-size", "8", "--epochs", "1", "sched.warmup_epochs=0",
        "log.progress=off", "log.tensorboard=false", "data.loader=dataloader"]
BOMB_REASON = ("12000x12000 = 144.0 megapixels, above data.max_image_pixels=89478485 (PIL's "
               "decompression-bomb limit); raise it or set 0 for no limit")
# PIL's two-line warning must never reach the user: any such warning fails the test.
pytestmark = pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")


@pytest.fixture(scope="module")
def bomb_file(tmp_path_factory) -> Path:
    """A 1-bit 12000x12000 PNG: about 17 KB on disk, 2 GB once decoded to RGB by check-data."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    Image.new("1", (12000, 12000)).save(path, optimize=True)
    return path


@pytest.fixture
def bombed(tmp_path, make_image_folder, bomb_file) -> Path:
    """4 small images per class, plus ants/bomb.png."""
    root = make_image_folder(tmp_path / "d", per_class=4, size=12)
    shutil.copy(bomb_file, root / "ants" / "bomb.png")
    return root


def test_default_is_pils_limit_and_pil_keeps_it(bomb_file):
    assert DataConfig().max_image_pixels == MAX_PIXELS == Image.MAX_IMAGE_PIXELS == 89_478_485
    assert bomb_file.stat().st_size < 100_000
    assert decode(str(bomb_file)).error == BOMB_REASON
    # PIL's check is off only while imgcls opens an image, then back for other code.
    assert Image.MAX_IMAGE_PIXELS == 89_478_485


def test_header_check():
    assert pixel_limit_error((12000, 12000), MAX_PIXELS) == BOMB_REASON
    assert pixel_limit_error((12000, 12000), 0) is None  # 0: no limit
    assert pixel_limit_error((64, 64), 4096) is None  # the limit itself is allowed
    assert pixel_limit_error((64, 64), 4095) == (
        "64x64 = 4096 pixels, above data.max_image_pixels=4095; raise it or set 0 for no limit")


def test_load_rgb_checks_before_decoding(tmp_path, bomb_file):
    with pytest.raises(ImgclsError) as caught:
        load_rgb(bomb_file)
    assert str(caught.value) == f"cannot read image {bomb_file}: {BOMB_REASON}"
    small = tmp_path / "small.png"
    Image.new("RGB", (64, 64), "red").save(small)
    assert load_rgb(small, 0).size == load_rgb(small, 4096).size == (64, 64)
    with pytest.raises(ImgclsError, match=r"small.png: 64x64 = 4096 pixels, above "
                                          r"data.max_image_pixels=1000;"):
        load_rgb(small, 1000)


def test_check_data_lists_it_in_one_line(tmp_path, bombed, capsys):
    code, out, err = run_cli(capsys, "check-data", str(bombed), "--output", str(tmp_path / "c"))
    assert code == 0 and not err.strip(), err
    assert f"unreadable: 1 (first: ants/bomb.png: {BOMB_REASON})" in out
    assert "DecompressionBomb" not in out
    report = json.loads((tmp_path / "c" / "check.json").read_text())
    assert report["images"] == {"files": 9, "readable": 8, "unreadable": 1}
    assert report["unreadable"] == [{"file": "ants/bomb.png", "part": "all", "class": "ants",
                                     "reason": BOMB_REASON}]
    assert report["settings"]["max_image_pixels"] == MAX_PIXELS


def test_check_data_never_decodes_it(tmp_path, bombed):
    """In a fresh process, as users run it: no PIL warning on stderr, and no 2 GB decode (the
    peak memory grows by little over what the imports took)."""
    script = textwrap.dedent("""
        import resource, sys
        import imgcls.datacheck, imgcls.cli, torch  # noqa: F401  (loaded before the baseline)
        from imgcls.cli import main
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        code = main(sys.argv[1:])
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(f"grown_kb {grown}")
        sys.exit(code)
    """)
    done = subprocess.run([sys.executable, "-c", script, "check-data", str(bombed), "--output",
                           str(tmp_path / "c")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "DecompressionBomb" not in done.stderr + done.stdout and not done.stderr.strip()
    assert f"ants/bomb.png: {BOMB_REASON}" in done.stdout
    grown_kb = int(done.stdout.split("grown_kb ")[1].split()[0])
    assert grown_kb < 400 * 1024, f"check-data grew by {grown_kb // 1024} MB"  # decoding: 1.5 GB


def test_training_stops_or_skips(tmp_path, bombed, capsys):
    code, _, err = run_cli(capsys, "train", "--data", str(bombed), *FAST, "--output",
                           str(tmp_path / "o"))
    assert_one_line_error(code, err, "bomb.png", BOMB_REASON)
    out = tmp_path / "o2"
    code, _, err = run_cli(capsys, "train", "--data", str(bombed), *FAST, "--output", str(out),
                           "--name", "r", "data.skip_bad_images=true")
    assert code == 0, err
    assert "skipped 1 unreadable image" in err and "bomb.png" in err
    assert "DecompressionBomb" not in err
    # predict: the checkpoint's limit; the file is one result with the reason, the rest classify
    report = predict.predict(out / "r" / "checkpoints" / "last.pt", [bombed], device="cpu")
    errors = {Path(r.path).name: r.error for r in report.results if r.error is not None}
    assert errors == {"bomb.png": BOMB_REASON} and len(report.results) == 9


def test_limit_reaches_dataloader_workers(tmp_path, make_image_folder, capsys):
    root = make_image_folder(tmp_path / "d", per_class=2, size=64)
    data = create_datasets(DataConfig(source=str(root), val_fraction=0.0, max_image_pixels=1000),
                           seed=0)
    assert data.train.max_pixels == 1000
    loader = DataLoader(data.train, num_workers=1, collate_fn=lambda batch: batch)
    with pytest.raises(ImgclsError, match="DataLoader worker") as caught:
        next(iter(loader))
    assert "64x64 = 4096 pixels, above data.max_image_pixels=1000;" in str(caught.value)
    # and from the command line, with the key set there
    code, _, err = run_cli(capsys, "train", "--data", str(root), *FAST, "--output",
                           str(tmp_path / "o"), "loader.num_workers=1",
                           "data.max_image_pixels=1000")
    assert_one_line_error(code, err, "64x64 = 4096 pixels", "data.max_image_pixels=1000")


def test_predict_prepare_uses_the_limit(tmp_path, bomb_file):
    as_tensor = v2.Compose([v2.PILToTensor()])
    assert predict._prepare(str(bomb_file), as_tensor) == BOMB_REASON
    small = tmp_path / "small.png"
    Image.new("RGB", (64, 64), "red").save(small)
    assert isinstance(predict._prepare(str(small), as_tensor, 0), torch.Tensor)
    assert "4096 pixels" in str(predict._prepare(str(small), as_tensor, 1000))


def test_negative_limit_is_a_config_error(tmp_path, make_image_folder, capsys):
    with pytest.raises(ImgclsError, match=r"config key data.max_image_pixels = -1 is invalid: "
                                          r"must be >= 0 \(0: no limit\)"):
        build_config(overrides={"data.max_image_pixels": -1})
    root = make_image_folder(tmp_path / "d", per_class=2, size=12)
    code, _, err = run_cli(capsys, "train", "--data", str(root), *FAST, "--output",
                           str(tmp_path / "o"), "data.max_image_pixels=-1")
    assert_one_line_error(code, err, "data.max_image_pixels", "must be >= 0")


def test_check_data_takes_the_limit_as_a_flag(tmp_path, bombed, capsys):
    code, out, err = run_cli(capsys, "check-data", str(bombed), "--output", str(tmp_path / "c"),
                             "--max-image-pixels", "100000000")
    assert code == 0, err
    assert "above data.max_image_pixels=100000000;" in out
    report = json.loads((tmp_path / "c" / "check.json").read_text())
    assert report["settings"]["max_image_pixels"] == 100_000_000
    code, _, err = run_cli(capsys, "check-data", str(bombed), "--max-image-pixels", "-1")
    assert_one_line_error(code, err, "--max-image-pixels -1: must be >= 0")
