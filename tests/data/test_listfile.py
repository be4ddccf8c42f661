"""One list-file reader for training and predict: the same lines, the same paths."""

from __future__ import annotations

import pytest
from PIL import Image

from imgcls.data.listfile import read_list_file
from imgcls.deploy.predict import collect_inputs
from imgcls.errors import ImgclsError


def test_training_and_predict_read_a_list_file_alike(tmp_path):
    for name in ("a.png", "my photo.png", "sub/b c.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    listing = tmp_path / "list.txt"
    listing.write_text("\ufeff# a comment\n\na.png cat\nmy photo.png dog\n  sub/b c.png   cat  \n")
    keys, samples, classes, _ = read_list_file(listing, tmp_path)
    assert keys == ["a.png", "my photo.png", "sub/b c.png"] and classes == ["cat", "dog"]
    assert collect_inputs([listing]) == [path for path, _ in samples]


def test_a_line_without_a_label_is_refused_in_training_but_predicted(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "my photo.png")
    listing = tmp_path / "list.txt"
    listing.write_text("my photo.png\n")
    with pytest.raises(ImgclsError, match=r"list.txt:1: expected 'relative/path label'"):
        read_list_file(listing, tmp_path)
    assert collect_inputs([listing]) == [str(tmp_path / "my photo.png")]
