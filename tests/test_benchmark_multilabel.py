"""benchmarks/multilabel.py (issue 25): the CIFAR mosaics and the attribute CSV it builds, on a
fake CIFAR-10 folder of a few tiny JPEGs per class; then the whole script end to end (slow)."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "multilabel.py"
CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")
PER_CLASS = 6  # 60 images: 24 mosaics at most (2.5 images each)


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """benchmarks/ is not a package: load the script as a module (its folder on sys.path for
    its own imports of the other benchmark modules)."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        spec = importlib.util.spec_from_file_location("benchmark_multilabel", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return module


@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``train/<class>/NNNN.jpg``: PER_CLASS 32x32 noisy JPEGs in each of CIFAR-10's classes."""
    root = tmp_path_factory.mktemp("cifar") / "train"
    rng = np.random.default_rng(0)
    for k, cls in enumerate(CIFAR10):
        (root / cls).mkdir(parents=True)
        for i in range(PER_CLASS):
            pixels = rng.normal(25 * k, 30, size=(32, 32, 3)).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(root / cls / f"{i:04d}.jpg", quality=90)
    return root


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_mosaics_tiles_labels_and_sources(bench: ModuleType, cifar: Path, tmp_path: Path) -> None:
    assert bench.most_mosaics(bench.class_files(cifar), None) == 24
    assert bench.most_mosaics(bench.class_files(cifar), 2) == 8  # 20 images: 8 mosaics, 20 tiles
    labels = bench.build_mosaics(cifar, tmp_path, 20, seed=3)
    rows = read_rows(labels)
    tiles = read_rows(labels.parent / "tiles.csv")
    assert list(rows[0]) == ["path", "tags"] and len(rows) == 20
    by_image: dict[str, list[dict[str, str]]] = {}
    for t in tiles:
        by_image.setdefault(t["path"], []).append(t)
    grey = np.full((32, 32, 3), bench.GREY, np.uint8)
    for row in rows:
        with Image.open(labels.parent / row["path"]) as im:
            assert im.size == (64, 64) and im.mode == "RGB"
            pixels = np.asarray(im)
        used = by_image[row["path"]]
        assert 1 <= len(used) <= 4
        assert row["tags"].split() == sorted({t["class"] for t in used})  # the set, sorted
        places = {int(t["place"]): t for t in used}
        assert len(places) == len(used)
        for place in range(4):
            r, c = divmod(place, 2)
            cell = pixels[32 * r:32 * (r + 1), 32 * c:32 * (c + 1)]
            if place in places:  # the source image itself, in its class's folder
                source = Path(places[place]["source"])
                assert source.parent == cifar / places[place]["class"]
                with Image.open(source) as src:
                    np.testing.assert_array_equal(cell, np.asarray(src.convert("RGB")))
            else:
                np.testing.assert_array_equal(cell, grey)
    sources = [t["source"] for t in tiles]
    assert len(sources) == len(set(sources)) == 50  # no image twice; 2.5 per mosaic
    assert Counter(len(v) for v in by_image.values()) == {1: 5, 2: 5, 3: 5, 4: 5}
    assert set(Counter(t["class"] for t in tiles).values()) == {5}  # stratified


def test_mosaics_same_seed_same_files_and_reused(bench: ModuleType, cifar: Path,
                                                tmp_path: Path) -> None:
    first = bench.build_mosaics(cifar, tmp_path / "a", 12, seed=1)
    again = bench.build_mosaics(cifar, tmp_path / "b", 12, seed=1)
    other = bench.build_mosaics(cifar, tmp_path / "c", 12, seed=2)
    assert first.parent.name == again.parent.name != other.parent.name  # keyed by the seed

    def files(folder: Path) -> dict[str, bytes]:
        return {str(p.relative_to(folder)): p.read_bytes()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    assert files(first.parent) == files(again.parent)
    assert len(files(first.parent)) == 12 + 2  # the PNGs, labels.csv and tiles.csv
    assert files(first.parent) != files(other.parent)
    stamp = first.stat().st_mtime_ns
    assert bench.build_mosaics(cifar, tmp_path / "a", 12, seed=1) == first  # written once
    assert first.stat().st_mtime_ns == stamp
    assert not list((tmp_path / "a").glob("*.part"))
    limited = bench.build_mosaics(cifar, tmp_path / "a", 8, seed=1, limit=2)
    assert limited.parent != first.parent  # keyed by the limit too
    assert len({t["source"] for t in read_rows(limited.parent / "tiles.csv")}) == 20


def test_attribute_csv_labels(bench: ModuleType, cifar: Path, tmp_path: Path) -> None:
    labels = bench.build_attributes(cifar, tmp_path, 30, seed=0)
    rows = read_rows(labels)
    assert list(rows[0]) == ["path", "tags"] and len(rows) == 30
    assert len({r["path"] for r in rows}) == 30
    classes = Counter()
    for row in rows:
        path = Path(row["path"])
        assert path.is_absolute() and path.is_file() and path.parent.parent == cifar
        cls, attr = row["tags"].split()
        assert cls == path.parent.name
        assert attr == ("vehicle" if cls in ("airplane", "automobile", "ship", "truck")
                        else "animal")
        classes[cls] += 1
    assert set(classes.values()) == {3}  # stratified
    # the single-label run's folder follows a split record of the CSV's keys: one image of
    # each class validates
    keys = [r["path"] for r in rows]
    val = list({Path(k).parent.name: k for k in keys}.values())
    split = {"train": [k for k in keys if k not in val], "val": val}
    counts = bench.single_label_folder(split, labels, tmp_path / "single")
    assert counts == {"train": 20, "val": 10}
    linked = sorted((tmp_path / "single" / "val").glob("*/*.jpg"))
    assert sorted(str(p.resolve()) for p in linked) == sorted(val)
    assert all(p.parent.name == Path(p.resolve()).parent.name for p in linked)

    def as_folder(part: str) -> list[str]:
        return [f"{part}/{Path(k).parent.name}/{Path(k).name}" for k in split[part]]

    sl_split = {"train": as_folder("train"), "val": as_folder("val")}
    assert bench.same_images(split, sl_split, "val") and bench.same_images(split, sl_split,
                                                                           "train")
    assert not bench.same_images(split, {"val": sl_split["val"][1:]}, "val")
    with pytest.raises(SystemExit, match="val part has no image of airplane"):
        short = {"train": split["train"], "val": [k for k in val if "/airplane/" not in k]}
        bench.single_label_folder(short, labels, tmp_path / "single")


@pytest.mark.slow
def test_the_script_end_to_end(cifar: Path, tmp_path: Path) -> None:
    # 24 mosaics, both losses, and 60 attribute images, one epoch each, on the fake folder;
    # half of them validate, so that every class has validation images
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--data", cifar.parent, "--work", tmp_path,
         "--mosaics", "100", "--epochs", "1", "--attributes", "60",
         "--set", "loader.batch_size=16", "--set", "data.val_fraction=0.5"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "the source holds images for 24 mosaics" in proc.stdout
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    mosaics = result["mosaics"]
    assert mosaics["n"] == 24 and mosaics["train"] + mosaics["val"] == 24 and mosaics["val"] > 6
    for loss in ("bce", "asl"):
        run = mosaics["runs"][loss]
        assert 0 <= run["map"] <= 1 and 0 <= run["hamming_loss"] <= 1, run
        assert run["images_per_s"] > 0 and run["epochs_run"] == 1
        saved = (Path(run["run_dir"]) / "config.yaml").read_text()
        assert f"loss: {loss}" in saved and "image_size: 64" in saved
    assert set(mosaics["asl_minus_bce"]) >= {"map", "micro_f1", "subset_accuracy",
                                             "hamming_loss", "seconds", "images_per_s"}
    attrs = result["attributes"]
    assert attrs["n"] == 60 and attrs["same_split"] == {"train": True, "val": True}
    assert set(attrs["per_class"]) == set(CIFAR10)
    assert all(0 <= v["single"] <= 1 and 0 <= v["multi"] <= 1
               for v in attrs["per_class"].values())
    assert attrs["mean_difference"] == pytest.approx(attrs["mean_multi"] - attrs["mean_single"])
    assert result["command"].startswith("python ") and result["cpu"] and result["commit"]
