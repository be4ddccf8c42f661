"""Data sources, splits and their error messages (all on small on-disk datasets, no network)."""

from __future__ import annotations

import io
import json
import os
import shutil
import urllib.error
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imgcls.data.cifar as cifar_module
from imgcls.config import DataConfig
from imgcls.data import (
    create_datasets,
    create_eval_dataset,
    from_dataset,
    load_rgb,
    load_split,
    save_split,
    stratified_split,
)
from imgcls.data.folder import to_rgb
from imgcls.errors import ImgclsError


def cfg(source: Path | str, **kw) -> DataConfig:
    return DataConfig(source=str(source), **kw)


def all_items(dataset):
    return [dataset[i] for i in range(len(dataset))]


def names(dataset) -> list[str]:
    return sorted(Path(p).name for p, _ in dataset.samples)


def corrupt(path: Path) -> None:
    path.write_bytes(b"this is not an image")


# --------------------------------------------------------------------------- splits


def test_stratified_split_counts_sorted_and_deterministic():
    labels = [0] * 50 + [1] * 30 + [2] * 2 + [3] * 1
    train, val = stratified_split(labels, 0.1, seed=3)
    assert train == sorted(train) and val == sorted(val)
    assert sorted(train + val) == list(range(len(labels)))
    per_class = Counter(labels[i] for i in val)
    assert per_class == {0: 5, 1: 3, 2: 1}  # >= 1 when a class has 2+, none from a singleton
    assert stratified_split(labels, 0.1, seed=3) == (train, val)
    assert stratified_split(labels, 0.1, seed=4) != (train, val)
    assert stratified_split(labels, 0.0, seed=3) == (list(range(len(labels))), [])


def test_stratified_split_keeps_one_training_image_per_class():
    train, val = stratified_split([0, 0, 1, 1, 1], 0.9, seed=0)
    assert Counter([0, 0, 1, 1, 1][i] for i in train) == {0: 1, 1: 1}


def test_split_record_round_trip(tmp_path):
    record = {"version": 1, "source": "x", "kind": "files", "seed": 2, "val_fraction": 0.2,
              "classes": ["a", "b"], "train": ["a/1.png", "b/2 x.png"], "val": ["a/3.png"]}
    save_split(record, tmp_path / "run" / "split.json")
    assert load_split(tmp_path / "run" / "split.json") == record


@pytest.mark.parametrize(
    "text",
    ["not json", "[1, 2]", '{"version": 1}',
     '{"version": 1, "kind": "indices", "classes": ["a"], "train": ["x"], "val": []}',
     '{"version": 1, "kind": "indices", "classes": ["a"], "train": [1], "val": [1]}',
     '{"version": 9, "kind": "files", "classes": [], "train": [], "val": []}'],
)
def test_load_split_rejects_malformed_files(tmp_path, text):
    path = tmp_path / "split.json"
    path.write_text(text)
    with pytest.raises(ImgclsError, match="split file .*split.json"):
        load_split(path)


def test_load_split_missing_file(tmp_path):
    with pytest.raises(ImgclsError, match="nope.json"):
        load_split(tmp_path / "nope.json")


# --------------------------------------------------------------------------- folders


def test_flat_folder_auto_split_is_stratified_and_rgb(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "d", classes=("ants", "bees", "cats"), per_class=10)
    data = create_datasets(cfg(root, val_fraction=0.2), seed=0)
    assert data.classes == ["ants", "bees", "cats"]
    assert (len(data.train), len(data.val)) == (24, 6)
    assert Counter(data.val.targets) == {0: 2, 1: 2, 2: 2}
    assert data.native_size is None and data.mean_std is None and data.skipped == []
    for dataset in (data.train, data.val):
        items = all_items(dataset)
        assert all(isinstance(img, Image.Image) and img.mode == "RGB" for img, _ in items)
        assert [label for _, label in items] == dataset.targets
        assert [label for _, label in dataset.samples] == dataset.targets
    record = data.split_record
    assert record["kind"] == "files" and record["classes"] == data.classes
    assert all(not k.startswith("/") and "/" in k for k in record["train"] + record["val"])
    json.dumps(record)
    again = create_datasets(cfg(root, val_fraction=0.2), seed=0)
    assert again.split_record == record


def test_images_keep_their_class_colour(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "d", classes=("c0", "c1", "c2"), per_class=4,
                             size=24)
    data = create_datasets(cfg(root, val_fraction=0.0), seed=0)
    assert data.val is None
    sizes = {img.size for img, _ in all_items(data.train)}
    assert sizes == {(24, 24)}
    # Greyscale aside, class k is hue k/3: red, green, blue, so the top channel is the label.
    for img, label in all_items(data.train):
        arr = np.asarray(img, dtype=float).reshape(-1, 3).mean(0)
        if arr.std() > 20:
            assert int(arr.argmax()) == label


def test_split_reused_exactly_from_record(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "d", per_class=12)
    first = create_datasets(cfg(root, val_fraction=0.25), seed=0)
    path = tmp_path / "split.json"
    save_split(first.split_record, path)
    other_seed = create_datasets(cfg(root, val_fraction=0.5), seed=7)
    assert names(other_seed.val) != names(first.val)
    reused = create_datasets(cfg(root, val_fraction=0.5), seed=7, split_record=load_split(path))
    assert reused.train.samples == first.train.samples
    assert reused.val.samples == first.val.samples
    assert reused.split_record == first.split_record
    val, classes = create_eval_dataset(cfg(root), "val", seed=7, split_record=load_split(path))
    assert val.samples == first.val.samples and classes == ["ants", "bees"]
    val, _ = create_eval_dataset(cfg(root, val_fraction=0.25), "val", seed=0)
    assert val.samples == first.val.samples


def test_record_naming_a_deleted_file(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "d")
    record = create_datasets(cfg(root), seed=0).split_record
    gone = record["val"][0]
    (root / gone).unlink()
    with pytest.raises(ImgclsError, match=gone):
        create_datasets(cfg(root), seed=0, split_record=record)


def test_record_with_other_classes(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "d")
    record = create_datasets(cfg(root), seed=0).split_record
    record["classes"] = ["ants", "wasps"]
    with pytest.raises(ImgclsError, match="wasps.*bees|bees.*wasps"):
        create_datasets(cfg(root), seed=0, split_record=record)


def test_record_of_another_kind(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "d")
    record = {"version": 1, "kind": "indices", "classes": ["ants", "bees"], "train": [0],
              "val": [1]}
    with pytest.raises(ImgclsError, match="indices"):
        create_datasets(cfg(root), seed=0, split_record=record)


def test_train_val_test_layout(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "d", per_class=3, layout="train_val_test")
    data = create_datasets(cfg(root, val_fraction=0.5), seed=0)
    assert (len(data.train), len(data.val)) == (6, 6)
    assert all(p.startswith(str(root / "val")) for p, _ in data.val.samples)
    assert data.split_record["val"][0].startswith("val/")
    test, classes = create_eval_dataset(cfg(root), "test", seed=0)
    assert len(test) == 6 and classes == ["ants", "bees"]
    assert all(p.startswith(str(root / "test")) for p, _ in test.samples)
    assert all(img.mode == "RGB" for img, _ in all_items(test))


def test_train_test_layout_validates_on_test(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "d", per_class=3, layout="train_test")
    data = create_datasets(cfg(root), seed=0)
    assert all(p.startswith(str(root / "test")) for p, _ in data.val.samples)
    val, _ = create_eval_dataset(cfg(root), "val", seed=0)
    assert val.samples == data.val.samples


def test_train_folder_alone_is_split(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "d", per_class=10, layout="train_val")
    shutil.rmtree(root / "val")
    data = create_datasets(cfg(root, val_fraction=0.2), seed=0)
    assert (len(data.train), len(data.val)) == (16, 4)
    assert all(k.startswith("train/") for k in data.split_record["val"])


def test_val_folder_with_other_classes(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "d", per_class=2, layout="train_val")
    shutil.rmtree(root / "val" / "bees")
    with pytest.raises(ImgclsError, match=f"{root / 'val'}.*bees"):
        create_datasets(cfg(root), seed=0)


def test_eval_test_split_missing_for_flat_folder(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "d", per_class=2)
    with pytest.raises(ImgclsError, match="no test split"):
        create_eval_dataset(cfg(root), "test", seed=0)
    with pytest.raises(ImgclsError, match="unknown evaluation split"):
        create_eval_dataset(cfg(root), "train", seed=0)


def test_eval_val_without_validation(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "d", per_class=2)
    with pytest.raises(ImgclsError, match="no validation set"):
        create_eval_dataset(cfg(root, val_fraction=0.0), "val", seed=0)


def test_extensions_are_case_insensitive_and_hidden_files_ignored(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "d", per_class=10, layout="flat")
    assert any(p.suffix == ".JPEG" for p in (root / "ants").iterdir())
    (root / "ants" / "._ants_000.jpg").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork
    (root / "ants" / "notes.txt").write_text("not an image")
    (root / ".ipynb_checkpoints").mkdir()
    data = create_datasets(cfg(root, val_fraction=0.0), seed=0)
    assert data.classes == ["ants", "bees"] and len(data.train) == 20


@pytest.mark.parametrize(
    "mode", ["1", "L", "LA", "P", "PA", "RGBA", "CMYK", "I;16", "YCbCr"]
)
def test_load_rgb_converts_every_mode(tmp_path, mode):
    img = Image.new("RGB", (5, 4), (200, 100, 50)).convert(mode)
    if mode == "I;16":
        img = Image.fromarray(np.full((4, 5), 65535, dtype=np.uint16))
    ext = "jpg" if mode in ("CMYK", "YCbCr") else "png" if mode != "PA" else "webp"
    path = tmp_path / f"x.{ext}"
    (img.convert("RGBA") if mode == "PA" else img).save(path)
    out = load_rgb(path)
    assert out.mode == "RGB" and out.size == (5, 4)
    if mode == "I;16":
        assert np.asarray(out).min() == 255  # 16-bit white stays white


def test_to_rgb_scales_32_bit_greyscale():
    img = Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.int32))  # mode "I"
    assert img.mode == "I"
    assert np.asarray(to_rgb(img))[0, :, 0].tolist() == [0, 128, 255]  # not clipped at 255


def test_palette_with_transparency_converts_without_warning(tmp_path, recwarn):
    img = Image.new("RGB", (6, 6), (10, 200, 10)).convert("P", palette=Image.Palette.ADAPTIVE)
    img.save(tmp_path / "t.gif", transparency=0)
    img.save(tmp_path / "t.png", transparency=bytes([0] * 256))
    for name in ("t.gif", "t.png"):
        assert load_rgb(tmp_path / name).mode == "RGB"
    assert not [w for w in recwarn if "Palette" in str(w.message)]


def test_getitem_does_not_touch_the_folder_tree(tmp_path, make_image_folder, monkeypatch):
    root = make_image_folder(tmp_path / "d", per_class=4)
    data = create_datasets(cfg(root), seed=0)

    def forbidden(*args, **kwargs):
        raise AssertionError("filesystem scan in __getitem__")

    monkeypatch.setattr(os, "scandir", forbidden)
    monkeypatch.setattr(os, "walk", forbidden)
    monkeypatch.setattr(os, "listdir", forbidden)
    assert len(all_items(data.train)) == len(data.train)


# --------------------------------------------------------------------------- folder errors


def test_missing_source(tmp_path):
    with pytest.raises(ImgclsError, match="data source not found: .*nowhere.*cifar10, cifar100"):
        create_datasets(cfg(tmp_path / "nowhere"), seed=0)


def test_source_is_some_other_file(tmp_path):
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ImgclsError, match="data.csv"):
        create_datasets(cfg(tmp_path / "data.csv"), seed=0)


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImgclsError, match=f"no class folders in {tmp_path / 'empty'}"):
        create_datasets(cfg(tmp_path / "empty"), seed=0)


def test_images_without_class_folders(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "d", per_class=2)
    loose = tmp_path / "loose"
    loose.mkdir()
    for p in (root / "ants").iterdir():
        shutil.copy(p, loose / p.name)
    with pytest.raises(ImgclsError, match="own sub-folder"):
        create_datasets(cfg(loose), seed=0)


def test_class_folder_without_images(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "d", per_class=2)
    (root / "wasps").mkdir()
    (root / "wasps" / "readme.txt").write_text("no images here")
    with pytest.raises(ImgclsError, match="no images .*wasps"):
        create_datasets(cfg(root), seed=0)


def test_corrupt_image_is_named_when_loaded(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "d", per_class=3)
    bad = root / "bees" / "bees_001.png"
    corrupt(bad)
    data = create_datasets(cfg(root, val_fraction=0.0), seed=0)
    index = [p for p, _ in data.train.samples].index(str(bad))
    with pytest.raises(ImgclsError, match="cannot read image .*bees_001.png"):
        data.train[index]


def test_truncated_image_is_named_when_loaded(tmp_path):
    (tmp_path / "d" / "a").mkdir(parents=True)
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, "JPEG")
    (tmp_path / "d" / "a" / "cut.jpg").write_bytes(buf.getvalue()[:300])
    (tmp_path / "d" / "b").mkdir()  # a second class: one class alone is refused
    Image.new("RGB", (8, 8)).save(tmp_path / "d" / "b" / "ok.png")
    data = create_datasets(cfg(tmp_path / "d", val_fraction=0.0), seed=0)
    with pytest.raises(ImgclsError, match="cut.jpg"):
        data.train[0]


def test_skip_bad_images(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "d", per_class=10)
    corrupt(root / "ants" / "ants_003.gif")
    corrupt(root / "bees" / "bees_007.png")
    data = create_datasets(cfg(root, val_fraction=0.2, skip_bad_images=True), seed=0)
    assert sorted(Path(p).name for p in data.skipped) == ["ants_003.gif", "bees_007.png"]
    assert len(data.train) + len(data.val) == 18
    assert all(img.mode == "RGB" for img, _ in all_items(data.train) + all_items(data.val))
    listed = data.split_record["train"] + data.split_record["val"]
    assert "ants/ants_003.gif" not in listed
    # Skipping does not move other images between train and val.
    clean = create_datasets(cfg(root, val_fraction=0.2), seed=0).split_record
    assert set(data.split_record["val"]) <= set(clean["val"])


# --------------------------------------------------------------------------- list files


def test_list_file_with_class_names(tmp_path, make_list_file):
    list_file = make_list_file(tmp_path / "l", classes=("bees", "ants"), per_class=10)
    data = create_datasets(cfg(list_file, val_fraction=0.2), seed=0)
    assert data.classes == ["ants", "bees"]
    assert (len(data.train), len(data.val)) == (16, 4)
    assert Counter(data.val.targets) == {0: 2, 1: 2}
    keys = data.split_record["train"] + data.split_record["val"]
    assert "images/ants/ants first.png" in keys  # a path with a space
    for p, label in data.train.samples:
        assert Path(p).parent.name == data.classes[label]
    assert all(img.mode == "RGB" for img, _ in all_items(data.train))
    reused = create_datasets(cfg(list_file), seed=5, split_record=data.split_record)
    assert reused.val.samples == data.val.samples


def test_list_file_with_integer_labels(tmp_path, make_list_file):
    list_file = make_list_file(tmp_path / "l", classes=("a", "b", "c"), per_class=4,
                               int_labels=True)
    text = list_file.read_text().replace(" 1\n", " 3\n")  # classes 0..3, "1" unused
    list_file.write_text(text)
    data = create_datasets(cfg(list_file, val_fraction=0.0), seed=0)
    assert data.classes == ["0", "1", "2", "3"]
    assert Counter(data.train.targets) == {0: 4, 3: 4, 2: 4}


def test_list_file_paths_fall_back_to_root(tmp_path, make_list_file):
    list_file = make_list_file(tmp_path / "l", per_class=3)
    elsewhere = tmp_path / "lists" / "mine.txt"
    elsewhere.parent.mkdir()
    shutil.move(list_file, elsewhere)
    data = create_datasets(cfg(elsewhere, root=str(tmp_path / "l"), val_fraction=0.0), seed=0)
    assert len(data.train) == 6
    with pytest.raises(ImgclsError, match="image file not found: images/ants/ants first.jpg"):
        create_datasets(cfg(elsewhere, root=str(tmp_path)), seed=0)


def test_list_file_bad_line(tmp_path, make_list_file):
    list_file = make_list_file(tmp_path / "l", per_class=2)
    list_file.write_text(list_file.read_text() + "just-a-path.jpg\n")
    with pytest.raises(ImgclsError, match=r"train.txt:7: expected 'relative/path label'"):
        create_datasets(cfg(list_file), seed=0)


def test_list_file_missing_image(tmp_path, make_list_file):
    list_file = make_list_file(tmp_path / "l", per_class=2)
    list_file.write_text(list_file.read_text() + "images/ants/gone.png ants\n")
    with pytest.raises(ImgclsError, match=r"images/ants/gone.png .*train.txt:7"):
        create_datasets(cfg(list_file), seed=0)
    data = create_datasets(cfg(list_file, skip_bad_images=True), seed=0)
    assert [Path(p).name for p in data.skipped] == ["gone.png"]


def test_list_file_errors(tmp_path, make_list_file):
    with pytest.raises(ImgclsError, match="list file not found: .*absent.txt"):
        create_datasets(cfg(tmp_path / "absent.txt"), seed=0)
    list_file = make_list_file(tmp_path / "l", per_class=2)
    with pytest.raises(ImgclsError, match="train.txt has no test split"):
        create_eval_dataset(cfg(list_file), "test", seed=0)
    list_file.write_text("# nothing\n\n")
    with pytest.raises(ImgclsError, match="train.txt lists no images"):
        create_datasets(cfg(list_file), seed=0)


# --------------------------------------------------------------------------- CIFAR


def test_cifar_pickle_folder(tmp_path, make_cifar_batches):
    folder = make_cifar_batches(tmp_path, n_train=100, n_test=40)
    data = create_datasets(cfg(folder), seed=0)
    assert data.classes == [f"class_{k}" for k in range(10)]
    assert (len(data.train), len(data.val)) == (90, 10)
    assert Counter(data.val.targets) == {k: 1 for k in range(10)}
    assert data.native_size == 32
    assert data.mean_std == ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])
    img, label = data.train[0]
    assert img.mode == "RGB" and img.size == (32, 32) and label == data.train.targets[0]
    assert data.split_record["kind"] == "indices"
    assert sorted(data.split_record["train"] + data.split_record["val"]) == list(range(100))
    reused = create_datasets(cfg(folder), seed=9, split_record=data.split_record)
    assert reused.val.indices == data.val.indices
    val, _ = create_eval_dataset(cfg(folder), "val", seed=0)
    assert val.indices == data.val.indices
    test, classes = create_eval_dataset(cfg(folder), "test", seed=0)
    assert len(test) == 40 and classes == data.classes and len(test.targets) == 40


def test_cifar_by_name_from_root_without_download(tmp_path, make_cifar_batches):
    make_cifar_batches(tmp_path / "data", n_train=20, n_test=10, num_classes=10)
    data = create_datasets(cfg("cifar10", root=str(tmp_path / "data"), download=False), seed=0)
    assert len(data.train) + len(data.val) == 20
    # The folder holding cifar-10-batches-py also works as a source.
    assert create_datasets(cfg(tmp_path / "data"), seed=0).val.indices == data.val.indices


def test_cifar_images_keep_their_colour(tmp_path, make_cifar_batches):
    folder = make_cifar_batches(tmp_path, n_train=30, num_classes=3)
    data = create_datasets(cfg(folder, val_fraction=0.0), seed=0)
    for img, label in all_items(data.train):
        assert int(np.asarray(img, dtype=float).reshape(-1, 3).mean(0).argmax()) == label


def test_cifar100_folder(tmp_path, make_cifar_batches):
    folder = make_cifar_batches(tmp_path, n_train=200, n_test=100, num_classes=100,
                                kind="cifar100")
    data = create_datasets(cfg(folder, val_fraction=0.5), seed=0)
    assert len(data.classes) == 100 and len(data.val) == 100
    assert data.mean_std[0] == [0.5071, 0.4865, 0.4409]
    assert len(create_eval_dataset(cfg(folder), "test", seed=0)[0]) == 100


def test_cifar_record_errors(tmp_path, make_cifar_batches):
    folder = make_cifar_batches(tmp_path, n_train=20, n_test=10)
    record = create_datasets(cfg(folder), seed=0).split_record
    with pytest.raises(ImgclsError, match="index 20"):
        create_datasets(cfg(folder), seed=0, split_record={**record, "val": [20]})
    with pytest.raises(ImgclsError, match="class_9"):
        create_datasets(cfg(folder), seed=0,
                        split_record={**record, "classes": record["classes"][:9]})


def test_cifar_offline_download_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(cifar_module, "download_and_extract_archive", offline)
    with pytest.raises(ImgclsError) as info:
        create_datasets(cfg("cifar10", root=str(tmp_path / "data")), seed=0)
    message = str(info.value)
    assert "\n" not in message
    assert "cannot download CIFAR-10" in message and "name resolution" in message
    assert "cifar-10-python.tar.gz" in message and "--data /path/to/cifar-10-batches-py" in message
    assert "data.root=" in message


def test_cifar_missing_without_download(tmp_path):
    with pytest.raises(ImgclsError, match="CIFAR-100 not found in .*cifar-100-python"):
        create_datasets(cfg("cifar100", root=str(tmp_path), download=False), seed=0)


def test_cifar_corrupt_pickle(tmp_path, make_cifar_batches):
    folder = make_cifar_batches(tmp_path, n_train=20, n_test=10)
    (folder / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(ImgclsError, match="cifar-10-batches-py"):
        create_datasets(cfg(folder), seed=0)


# --------------------------------------------------------------------------- Python API


class Plain(torch.utils.data.Dataset):
    """A dataset without ``targets`` or ``classes``."""

    def __init__(self, labels):
        self.labels = labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return Image.new("RGB", (8, 8)), self.labels[i]


def test_from_dataset_without_targets():
    data = from_dataset(Plain([0, 1, 2] * 10), val_fraction=0.2, seed=1)
    assert data.classes == ["0", "1", "2"]
    assert (len(data.train), len(data.val)) == (24, 6)
    assert Counter(data.val.targets) == {0: 2, 1: 2, 2: 2}
    assert data.val[0][1] == data.val.targets[0]
    json.dumps(data.split_record)


def test_from_dataset_with_targets_and_val(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "d", per_class=3, layout="train_val")
    base = create_datasets(cfg(root), seed=0)
    data = from_dataset(base.train, base.val, classes=["x", "y"])
    assert data.classes == ["x", "y"] and len(data.val) == 6
    assert data.train.targets == base.train.targets
    with pytest.raises(ImgclsError, match="out of range"):
        from_dataset(Plain([0, 5]), classes=["a", "b"])
