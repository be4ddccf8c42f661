"""Data that would silently mislead training: symlink loops and parent links, broken links,
EXIF-rotated photos, list files with impossible labels, a single class (issue 13, item 6)."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FORMATS, assert_one_line_error, run_cli
from PIL import Image
from torchvision.transforms import v2

from imgcls.config import DataConfig
from imgcls.data import create_datasets, create_eval_dataset
from imgcls.data.decode_cache import decode_to_tensor
from imgcls.datacheck import check_data
from imgcls.datacheck.scan import decode
from imgcls.deploy import predict

FAST = ["--model", "lenet", "--batch-size", "8", "--epochs", "1", "sched.warmup_epochs=0",
        "log.progress=off", "log.tensorboard=false"]


def real_files(root: Path) -> set[str]:
    """Real paths of the image files under ``root``, found without following any link."""
    return {os.path.realpath(os.path.join(d, f)) for d, _, files in os.walk(root)
            for f in files if not os.path.islink(os.path.join(d, f))}


@pytest.fixture
def linked(tmp_path, make_image_folder) -> Path:
    """4 images per class, a folder outside linked from both classes, a loop, a link to the
    data folder, and a file linked from ants to a bees image."""
    root = make_image_folder(tmp_path / "d", per_class=4, size=12)
    outside = make_image_folder(tmp_path / "outside", classes=("x",), per_class=2, size=12) / "x"
    os.symlink(".", root / "ants" / "loop")
    os.symlink("..", root / "bees" / "up")
    os.symlink(outside, root / "ants" / "extra")
    os.symlink(outside, root / "bees" / "extra_again")
    os.symlink("../bees/bees_000.png", root / "ants" / "copy.png")
    return root


def test_symlink_loop_and_parent_link_count_each_image_once(tmp_path, linked, capsys):
    real = real_files(linked) | real_files(tmp_path / "outside")
    assert len(real) == 10
    out = tmp_path / "runs"
    code, _, err = run_cli(capsys, "train", "--data", str(linked), *FAST, "--output", str(out),
                           "--name", "r", "data.val_fraction=0.3")
    assert code == 0, err
    assert "did not follow 4 symlink(s)" in err and "Traceback" not in err
    split = json.loads((out / "r" / "split.json").read_text())
    train = [os.path.realpath(linked / key) for key in split["train"]]
    val = [os.path.realpath(linked / key) for key in split["val"]]
    assert len(train) + len(val) == 10 and set(train) | set(val) == real  # each file once
    assert not set(train) & set(val)  # no photo in both train and validation
    # A file linked into ants keeps the class of the folder it really lies in.
    data = create_datasets(DataConfig(source=str(linked), val_fraction=0.0), seed=0)
    labels = {os.path.realpath(p): data.classes[y] for p, y in data.train.samples}
    assert labels[os.path.realpath(linked / "bees" / "bees_000.png")] == "bees"
    assert sorted(data.links_dropped) == ["ants/copy.png", "ants/loop", "bees/extra_again",
                                          "bees/up"]
    assert Counter(labels.values()) == {"ants": 6, "bees": 4}
    # check-data and predict list the same images, without a traceback or a loop.
    code, printed, err = run_cli(capsys, "check-data", str(linked), "--output", str(tmp_path / "c"))
    assert code == 0, err
    report = json.loads((tmp_path / "c" / "check.json").read_text())
    assert report["images"]["readable"] == 10 and len(report["links_not_followed"]) == 4
    assert "4 symlink(s) not followed" in printed
    assert {os.path.realpath(p) for p in predict.collect_inputs([linked])} == real
    assert len(predict.collect_inputs([linked])) == 10


def test_dangling_symlink_is_a_bad_image(tmp_path, make_image_folder, capsys):
    root = make_image_folder(tmp_path / "d", per_class=4, size=12)
    os.symlink(tmp_path / "gone.jpg", root / "bees" / "dangling.jpg")
    code, _, err = run_cli(capsys, "train", "--data", str(root), *FAST, "--output",
                           str(tmp_path / "o"), "data.loader=dataloader")
    assert_one_line_error(code, err, "dangling.jpg", "broken symlink")
    code, _, err = run_cli(capsys, "train", "--data", str(root), *FAST, "--output",
                           str(tmp_path / "o2"), "data.skip_bad_images=true")
    assert code == 0, err
    assert "skipped 1 unreadable image" in err and "dangling.jpg" in err
    code, out, err = run_cli(capsys, "check-data", str(root), "--output", str(tmp_path / "c"))
    assert code == 0 and "Traceback" not in err, err
    assert "unreadable: 1 (first: bees/dangling.jpg: broken symlink)" in out


def save_rotated_photo(path: Path) -> None:
    """A 40 x 20 JPEG, left half red and right half blue, tagged EXIF Orientation=6: a viewer
    turns it 90 degrees clockwise, showing a 20 x 40 photo with red on top."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20, 0] = 255
    pixels[:, 20:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, exif=exif, quality=95)


def assert_upright(chw: torch.Tensor) -> None:
    """A [3, H, W] uint8 tensor of the photo as a viewer shows it: taller than wide, red on
    top, blue below."""
    h, w = chw.shape[1:]
    top, bottom = chw[:, : h // 4].float().mean((1, 2)), chw[:, -h // 4 :].float().mean((1, 2))
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0], (top, bottom)


def test_exif_orientation_is_applied_everywhere(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "d", per_class=3, size=12, layout="train_val")
    for part in ("train", "val"):
        save_rotated_photo(root / part / "ants" / "phone.jpg")
    with Image.open(root / "val" / "ants" / "phone.jpg") as raw:
        assert raw.size == (40, 20)  # stored sideways
    as_tensor = v2.Compose([v2.PILToTensor()])
    data = DataConfig(source=str(root))
    train = create_datasets(data, seed=0).train
    index = [Path(p).name for p, _ in train.samples].index("phone.jpg")
    assert train[index][0].size == (20, 40)
    assert_upright(as_tensor(train[index][0]))
    # evaluate: the validation set, and the memory loader's decode (which resizes to a square)
    val, _ = create_eval_dataset(data, "val", seed=0)
    index = [Path(p).name for p, _ in val.samples].index("phone.jpg")
    assert val[index][0].size == (20, 40)
    images, _ = decode_to_tensor(val, 16, cache_dir=tmp_path / "cache")
    assert_upright(images[index])
    photo = str(root / "val" / "ants" / "phone.jpg")
    prepared = predict._prepare(photo, as_tensor)  # predict's one place that loads an image
    assert isinstance(prepared, torch.Tensor) and prepared.shape == (3, 40, 20)
    assert_upright(prepared)
    decoded = decode(photo)  # check-data reports the size training sees
    assert (decoded.width, decoded.height) == (20, 40)


def write_list(tmp_path: Path, labels: list[str]) -> Path:
    """Images ``img/i.png`` and a list file with one line per label, after a comment line."""
    (tmp_path / "img").mkdir(parents=True)
    for i in range(len(labels)):
        ext, mode = FORMATS[i % 2]
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).convert(mode).save(tmp_path / f"img/{i}.{ext}")
    lines = ["# path label"] + [f"img/{i}.{FORMATS[i % 2][0]} {y}" for i, y in enumerate(labels)]
    list_file = tmp_path / "train.txt"
    list_file.write_text("\n".join(lines) + "\n")
    return list_file


@pytest.mark.parametrize(("labels", "line", "needle"), [
    (["0", "1", "100000", "1"], 4, "label 100000 implies 100001 classes, but only 3 have"),
    (["0", "1", "9" * 5000, "1"], 4, "implies over 10^9 classes"),  # int() would raise
    (["0", "1", "-1", "1"], 4, "label -1 is negative"),
    (["0", "1", "1.5", "0"], 4, "label '1.5' is not a class index"),
    (["0", "1", "cat", "0"], 4, "label 'cat' is not a class index"),
    (["cat", "cat", "cat"], 2, "every image has label 'cat'"),
    (["0", "0", "0"], 2, "every image has label '0'"),
    (["5", "5", "1", "1"], 2, "label 5 implies 6 classes, but only 2 have"),
], ids=["huge", "5000-digit", "negative", "float", "name-among-indices", "one-name",
        "one-index", "half-empty"])
def test_list_file_bad_labels_are_refused(tmp_path, capsys, labels, line, needle):
    list_file = write_list(tmp_path, labels)
    code, _, err = run_cli(capsys, "train", "--data", str(list_file), *FAST, "--output",
                           str(tmp_path / "o"))
    assert_one_line_error(code, err, f"{list_file}:{line}: ", needle)
    assert not (tmp_path / "o").exists()
    code, _, err = run_cli(capsys, "check-data", str(list_file), "--output", str(tmp_path / "c"))
    assert_one_line_error(code, err, f"{list_file}:{line}: ")


def test_list_file_labels_within_the_rules(tmp_path):
    # Up to half the classes 0..K-1 may be unused; names that look like numbers stay names.
    data = create_datasets(DataConfig(source=str(write_list(tmp_path / "a", ["0", "3", "3", "0"])),
                                      val_fraction=0.0), seed=0)
    assert data.classes == ["0", "1", "2", "3"] and data.train.targets == [0, 3, 3, 0]
    named = write_list(tmp_path / "b", ["cat", "-1", "2.5", "cat"])
    data = create_datasets(DataConfig(source=str(named), val_fraction=0.0), seed=0)
    assert data.classes == ["-1", "2.5", "cat"] and data.train.targets == [2, 0, 1, 2]


def test_one_class_folder_is_refused(tmp_path, make_image_folder, capsys):
    root = make_image_folder(tmp_path / "d", classes=("ants",), per_class=4, size=12)
    code, _, err = run_cli(capsys, "train", "--data", str(root), *FAST, "--output",
                           str(tmp_path / "o"))
    assert_one_line_error(code, err, str(root), "one class folder (ants)", "two or more")
    make_image_folder(tmp_path / "t", classes=("ants",), per_class=4, size=12, layout="train_val")
    code, _, err = run_cli(capsys, "train", "--data", str(tmp_path / "t"), *FAST, "--output",
                           str(tmp_path / "o"))
    assert_one_line_error(code, err, "one class folder (ants)")
    result = check_data(root, output=tmp_path / "c")  # check-data still describes it
    assert result.report["images"]["readable"] == 4
