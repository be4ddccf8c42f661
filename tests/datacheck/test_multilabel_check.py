"""`imgcls check-data` on a multi-label CSV (both layouts): images per label, labels per image,
images with no label, the most frequent label pairs, duplicates whose label sets differ, the
printed summary, the page, and a malformed CSV's one-line error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    assert_one_line_error,
    check_rendered_page,
    render_in_browser,
    run_cli,
)
from PIL import Image

from imgcls.data.label_csv import read_label_csv
from imgcls.datacheck import check_data, summary_lines

CLASSES = ("cat", "dog", "car")  # the columns layout's order; tags sort them: car, cat, dog
# file -> labels; f.png is a copy of a.png's pixels with other labels, h.png does not exist
LABELS = {
    "a.png": ("cat", "dog"),
    "b.png": ("cat",),
    "c.png": (),
    "d.png": ("cat", "dog", "car"),
    "e.png": ("dog",),
    "f.png": ("car",),
    "g.png": ("cat", "dog"),
    "h.png": ("cat",),
}


def _write_csv(root: Path, layout: str) -> Path:
    """Noise PNGs (no two alike but a.png and f.png) and ``root/labels.csv`` listing them."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(3)
    for name in LABELS:
        if name in ("f.png", "h.png"):
            continue
        pixels = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels, "RGB").save(root / "images" / name)
    shutil.copy(root / "images/a.png", root / "images/f.png")
    if layout == "tags":
        rows = ["path,tags", *(f"images/{n},{';'.join(ls)}" for n, ls in LABELS.items())]
    else:
        rows = [f"image,{','.join(CLASSES)}",
                *(f"images/{n},{','.join(str(int(c in ls)) for c in CLASSES)}"
                  for n, ls in LABELS.items())]
    (root / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root / "labels.csv"


@pytest.mark.parametrize("layout", ["tags", "columns"])
def test_label_csv_counts_cardinality_pairs_and_conflicts(tmp_path, capsys, layout):
    csv_file = _write_csv(tmp_path / "data", layout)
    code, out, err = run_cli(capsys, "check-data", str(csv_file), "--output",
                             str(tmp_path / "out"))
    assert code == 0, err
    report = json.loads((tmp_path / "out/check.json").read_text())
    assert report["kind"] == "csv" and report["parts"] == ["all"]
    assert sorted(report["classes"]) == ["car", "cat", "dog"]
    assert report["images"] == {"files": 8, "readable": 7, "unreadable": 1}
    assert report["unreadable"][0]["file"] == "images/h.png"
    assert report["unreadable"][0]["reason"] == "file not found"
    # an image counts under each of its labels
    assert report["counts"]["all"] == {"car": 2, "cat": 4, "dog": 4}
    assert report["imbalance"]["all"]["ratio"] == pytest.approx(2.0)
    assert report["imbalance"]["all"]["smallest_class"] == "car"

    multi = report["multilabel"]
    assert multi["images"] == 7
    assert multi["label_counts"] == {"car": 2, "cat": 4, "dog": 4}
    assert multi["cardinality"]["histogram"] == [
        {"labels": 0, "images": 1}, {"labels": 1, "images": 3},
        {"labels": 2, "images": 2}, {"labels": 3, "images": 1}]
    assert multi["cardinality"]["mean"] == pytest.approx(10 / 7, abs=1e-4)
    assert multi["cardinality"]["max"] == 3
    assert multi["no_label"] == {"images": 1, "examples": ["images/c.png"]}
    pairs = [(frozenset(p["labels"]), p["images"]) for p in multi["top_pairs"]]
    assert pairs[0] == (frozenset({"cat", "dog"}), 3)
    assert set(pairs[1:]) == {(frozenset({"car", "cat"}), 1), (frozenset({"car", "dog"}), 1)}

    # a.png and f.png: the same pixels with different label sets
    exact = report["exact_duplicates"]
    assert exact["groups"] == 1
    group = exact["list"][0]
    assert {f["file"]: sorted(f["labels"]) for f in group["files"]} == {
        "images/a.png": ["cat", "dog"], "images/f.png": ["car"]}
    assert sorted(map(sorted, group["label_sets"])) == [["car"], ["cat", "dog"]]
    assert report["label_conflicts"] == 1
    assert "1 duplicate group(s) span different label sets" in report["warnings"]

    lines = out.splitlines()
    assert "7 images, 3 labels (all 7)" in lines[0], out
    assert "imbalance (largest/smallest label): all 2.00" in out
    label_line = next(line for line in lines if line.startswith("labels per image:"))
    assert label_line.startswith("labels per image: mean 1.43, max 3 (0: 1, 1: 3, 2: 2, 3: 1); "
                                 "no label: 1 (first: images/c.png); top pairs: "), label_line
    assert "cat+dog 3" in label_line or "dog+cat 3" in label_line

    page = (tmp_path / "out/index.html").read_text()
    assert '<section id="labels">' in page
    assert "Labels per image: mean 1.43, max 3" in page and "Images with no label (1)" in page
    assert "Most frequent label pairs (3)" in page


def test_counts_match_the_label_table(tmp_path, make_label_csv):
    """On the training tests' CSV: the check's numbers are the targets' sums."""
    csv_file = make_label_csv(tmp_path / "ml", n=40, layout="columns")
    table = read_label_csv(csv_file, tmp_path)
    multi = check_data(csv_file, output=tmp_path / "out").report["multilabel"]
    assert multi["label_counts"] == dict(zip(table.classes, table.targets.sum(0).tolist(),
                                             strict=True))
    per_image = np.bincount(table.targets.sum(1))
    assert [h["images"] for h in multi["cardinality"]["histogram"]] == per_image.tolist()
    assert multi["no_label"]["images"] == int(per_image[0])
    co = table.targets.T.astype(int) @ table.targets.astype(int)
    for pair in multi["top_pairs"]:
        a, b = (table.classes.index(name) for name in pair["labels"])
        assert pair["images"] == co[a, b]


def test_malformed_csv_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "labels.csv"
    bad.write_text("path,tags\nimages/a.png,cat,dog\n", encoding="utf-8")
    assert_one_line_error(*run_cli(capsys, "check-data", str(bad))[::2],
                          "labels.csv:2", "expected 2 cells")
    bad.write_text("path,cat,dog\nimages/a.png,1,2\n", encoding="utf-8")
    assert_one_line_error(*run_cli(capsys, "check-data", str(bad))[::2],
                          "labels.csv:2", "must be 0 or 1")


def test_multilabel_page_renders_in_a_browser(tmp_path):
    result = check_data(_write_csv(tmp_path / "data", "tags"), output=tmp_path / "out")
    assert any(line.startswith("labels per image:") for line in summary_lines(result))
    page = result.output / "index.html"
    dom, log = render_in_browser(page, tmp_path / "shot.png")
    check_rendered_page(dom, log, page.read_text(encoding="utf-8"),
                        ("leaks", "classes", "labels", "unreadable", "exact", "sizes"),
                        tmp_path / "shot.png")
