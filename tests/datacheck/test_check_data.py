"""`imgcls check-data` on folders the tests build: counts, imbalance, sizes and modes,
unreadable files, exact and near duplicates, leaks between the parts, the page, the exit codes;
and the one-line leak warning at the start of training."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    assert_one_line_error,
    check_rendered_page,
    random_pixels,
    render_in_browser,
    run_cli,
    save_image,
)
from PIL import Image

from imgcls import api
from imgcls.config import build_config
from imgcls.datacheck import check_data
from imgcls.datacheck.hashing import hamming, near_pairs
from imgcls.datacheck.leaks import count_train_val_copies

CLASSES = ("ants", "bees", "cats")






@pytest.fixture
def messy(tmp_path, make_image_folder) -> Path:
    """train/ val/ test/ with an exact copy train -> val, near copies (re-encoded, resized,
    touched) train -> test and train -> val, an unreadable file, a truncated one and 12 more
    ants (an imbalance)."""
    data = make_image_folder(tmp_path / "messy", classes=CLASSES, per_class=6,
                             layout="train_val_test")
    shutil.copy(data / "train/ants/ants_000.jpg", data / "val/ants/copy.jpg")
    # re-encoded: the PNG saved as a JPEG at quality 90
    Image.open(data / "train/bees/bees_000.png").convert("RGB").save(
        data / "test/bees/reencoded.jpg", quality=90)
    # resized to twice the size, saved as a PNG
    small = Image.open(data / "train/ants/ants_004.webp").convert("RGB")
    small.resize((small.width * 2, small.height * 2), Image.Resampling.LANCZOS).save(
        data / "test/ants/bigger.png")
    # two pixels changed, saved losslessly
    pixels = np.array(Image.open(data / "train/cats/cats_004.png").convert("RGB"))
    pixels[0, 0] = 255 - pixels[0, 0]
    pixels[3, 5] = 0
    Image.fromarray(pixels).save(data / "val/cats/touched.png")
    (data / "train/cats/garbage.jpg").write_bytes(b"this is not an image")
    whole = (data / "train/ants/ants_000.jpg").read_bytes()
    (data / "train/bees/truncated.jpg").write_bytes(whole[: len(whole) // 2])
    rng = np.random.default_rng(7)
    for i in range(12):
        save_image(random_pixels(rng, 30, 40, 0, 3, True), data / f"train/ants/more_{i}.png",
                   "RGB")
    return data


def test_check_reports_counts_duplicates_and_leaks(tmp_path, messy, capsys):
    code, out, err = run_cli(capsys, "check-data", str(messy), "--output", str(tmp_path / "out"))
    assert code == 0, err
    report = json.loads((tmp_path / "out/check.json").read_text())
    assert report["parts"] == ["train", "val", "test"]
    assert report["images"] == {"files": 18 * 3 + 4 + 2 + 12, "readable": 18 * 3 + 4 + 12,
                                "unreadable": 2}
    assert report["counts"]["train"] == {"ants": 18, "bees": 6, "cats": 6}
    assert report["imbalance"]["train"]["ratio"] == pytest.approx(3.0)
    assert report["imbalance"]["val"]["ratio"] == pytest.approx(7 / 6)
    reasons = {b["file"]: b["reason"] for b in report["unreadable"]}
    assert reasons["train/cats/garbage.jpg"] == "not a recognised image file"
    assert "truncated" in reasons["train/bees/truncated.jpg"].lower()
    assert sum(h["count"] for h in report["sizes"]["histogram"]) == report["images"]["readable"]
    assert {"RGB", "L", "P", "RGBA", "CMYK"} <= set(report["modes"])
    assert report["sizes"]["width"]["min"] >= 20 and report["sizes"]["width"]["max"] <= 48

    exact = report["exact_duplicates"]
    assert exact["groups"] == 1 and exact["extra_copies"] == 1
    assert {f["file"] for f in exact["list"][0]["files"]} == {"train/ants/ants_000.jpg",
                                                               "val/ants/copy.jpg"}
    near = report["near_duplicates"]
    assert near["groups"] == 3 and near["across_parts"] == 3
    pairs = {(p["parts"], p["kind"], p["file"], p["copy_of"]) for p in report["leaks"]["pairs"]}
    assert pairs == {
        ("train-val", "exact", "val/ants/copy.jpg", "train/ants/ants_000.jpg"),
        ("train-val", "near", "val/cats/touched.png", "train/cats/cats_004.png"),
        ("train-test", "near", "test/bees/reencoded.jpg", "train/bees/bees_000.png"),
        ("train-test", "near", "test/ants/bigger.png", "train/ants/ants_004.webp"),
    }
    assert report["leaks"]["counts"]["train-val"] == {"exact": 1, "near": 1}
    assert report["leaks"]["counts"]["val-test"] == {"exact": 0, "near": 0}
    assert all(p["distance"] <= report["settings"]["near_threshold"]
               for p in report["leaks"]["pairs"])
    assert any("imbalanced" in w for w in report["warnings"])
    for needle in ("unreadable: 2", "train-val 1 exact / 1 near", "train-test 0 exact / 2 near",
                   "imbalance", "train 3.00"):
        assert needle in out, (needle, out)

    page = (tmp_path / "out/index.html").read_text()
    assert page.count("data:image/png;base64,") >= 6  # the three leak pairs, at least
    assert "http://" not in page and "https://" not in page
    assert "val/cats/touched.png" in page and "not a recognised image file" in page


def test_page_renders_in_a_browser(tmp_path, messy):
    page = check_data(messy, output=tmp_path / "out").output / "index.html"
    dom, log = render_in_browser(page, tmp_path / "shot.png")
    check_rendered_page(dom, log, page.read_text(encoding="utf-8"),
                        ("leaks", "classes", "unreadable", "exact", "near", "sizes", "blank"),
                        tmp_path / "shot.png")
    assert len(re.findall(r"<img [^>]*>", dom)) >= 6


def test_clean_folder_has_no_leaks(tmp_path, make_image_folder, capsys, monkeypatch):
    data = make_image_folder(tmp_path / "clean", classes=CLASSES, per_class=5, layout="train_val")
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "check-data", str(data))
    assert code == 0, err
    report = json.loads((tmp_path / "check-data-clean/check.json").read_text())
    assert report["leaks"]["total"] == 0 and report["leaks"]["counts"] == {
        "train-val": {"exact": 0, "near": 0}}
    assert report["exact_duplicates"]["groups"] == 0 and report["near_duplicates"]["groups"] == 0
    assert report["unreadable"] == [] and report["warnings"] == []
    assert "train-val 0 exact / 0 near" in out


def test_single_folder_and_list_file(tmp_path, make_image_folder, make_list_file, capsys):
    data = make_image_folder(tmp_path / "flat", per_class=4)
    shutil.copy(data / "ants/ants_001.png", data / "bees/dup.png")  # same image, two classes
    result = check_data(data, output=tmp_path / "out1")
    assert result.report["parts"] == ["all"] and result.report["leaks"]["counts"] == {}
    assert result.report["exact_duplicates"]["within_part"] == {"all": {"groups": 1, "images": 2}}
    assert result.report["label_conflicts"] == 1
    listed = make_list_file(tmp_path / "listed", per_class=3)
    code, out, err = run_cli(capsys, "check-data", str(listed), "--output", str(tmp_path / "out2"))
    assert code == 0, err
    report = json.loads((tmp_path / "out2/check.json").read_text())
    assert report["kind"] == "list" and report["images"]["readable"] == 6
    assert "no train/ val/ test/ parts" in out


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert_one_line_error(*run_cli(capsys, "check-data", str(tmp_path / "nope"))[::2], "nope")
    (tmp_path / "empty/ants").mkdir(parents=True)
    assert_one_line_error(*run_cli(capsys, "check-data", str(tmp_path / "empty"))[::2],
                          "no images in")
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose/a.png").write_bytes(b"x")
    assert_one_line_error(*run_cli(capsys, "check-data", str(tmp_path / "loose"))[::2],
                    "no class folders in")
    (tmp_path / "bad/ants").mkdir(parents=True)
    (tmp_path / "bad/ants/a.jpg").write_bytes(b"x")
    assert_one_line_error(*run_cli(capsys, "check-data", str(tmp_path / "bad"), "--output",
                          str(tmp_path / "o"))[::2], "no readable images")
    (tmp_path / "f.csv").write_text("a,b\n")
    assert_one_line_error(*run_cli(capsys, "check-data", str(tmp_path / "f.csv"))[::2], "f.csv")


def test_near_pairs_match_brute_force():
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, size=300, dtype=np.uint64)
    flips = rng.integers(0, 64, size=(100, 3))
    for n, bits in enumerate(flips):  # plant 100 hashes 1..3 bits from another
        for b in bits[: 1 + n % 3]:
            hashes[200 + n] = hashes[n] ^ (np.uint64(1) << np.uint64(b))
    labels = near_pairs(hashes, threshold=3).labels()
    for i in range(len(hashes)):
        close = np.flatnonzero(hamming(hashes[i], hashes) <= 3)
        assert {labels[j] for j in close} == {labels[i]}


def test_training_start_warns_about_train_val_copies(tmp_path, make_image_folder, capsys):
    data = make_image_folder(tmp_path / "leaky", per_class=6, layout="train_val")
    for name in ("ants_000.jpg", "ants_001.png"):
        shutil.copy(data / "train/ants" / name, data / "val/ants" / f"copy_{name}")
    cache = tmp_path / "root" / ".imgcls-cache"
    def cfg(name: str):
        return build_config(overrides={
            "data.source": str(data), "data.root": str(tmp_path / "root"),
            "model.name": "lenet", "train.epochs": 1, "loader.batch_size": 16,
            "sched.warmup_epochs": 0.0, "log.progress": "off",
            "log.output": str(tmp_path / "runs"), "log.name": name})

    api.train(cfg("leaky"))
    out = capsys.readouterr().err  # training talks on stderr
    assert "warning: 2 validation image(s) are exact copies of training images" in out
    assert f"imgcls check-data {data}" in out
    assert list(cache.glob("file-hashes-*.json"))
    # a clean split: nothing said; the cached hashes answer the second time
    for name in ("ants_000.jpg", "ants_001.png"):
        (data / "val/ants" / f"copy_{name}").unlink()
    api.train(cfg("clean"))
    assert "exact copies" not in capsys.readouterr().err
    train = [str(p) for p in (data / "train").rglob("*.*")]
    assert count_train_val_copies(train, [*train[:3], str(data / "val/bees/bees_000.png")],
                                  cache) == 3
