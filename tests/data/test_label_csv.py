"""Multi-label CSV files in both layouts, and one line naming FILE:LINE for each bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcls.data.label_csv import is_label_csv, read_label_csv
from imgcls.errors import ImgclsError


def images(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (200, 30, 30)).save(folder / name)  # JPEG or PNG by suffix


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def test_planet_style_tags(tmp_path):
    images(tmp_path, "train_0.jpg", "train_1.jpg", "b.png", "c.png", "d.png", "e.png")
    csv_file = write(
        tmp_path / "labels.csv",
        "\ufeffimage_name,tags\n"
        "train_0,haze primary\n"
        "\n"
        "train_1,  primary   clear \n"
        "b.png,cat;dog\n"
        ",\n"  # a row of blank cells is left out like a blank line
        'c.png,"cat; dog; cat"\n'
        "d.png,\n"
        "e.png,water\n",
    )
    table = read_label_csv(csv_file, tmp_path)
    assert table.layout == "tags"
    assert table.classes == ["cat", "clear", "dog", "haze", "primary", "water"]
    assert table.keys == ["train_0", "train_1", "b.png", "c.png", "d.png", "e.png"]
    assert table.paths[:3] == [str(tmp_path / n) for n in ("train_0.jpg", "train_1.jpg", "b.png")]
    assert table.lines == [2, 4, 5, 7, 8, 9]
    assert table.targets.dtype == np.uint8
    assert table.targets.tolist() == [
        [0, 0, 0, 1, 1, 0],
        [0, 1, 0, 0, 1, 0],
        [1, 0, 1, 0, 0, 0],
        [1, 0, 1, 0, 0, 0],  # "cat" twice counts once
        [0, 0, 0, 0, 0, 0],  # an empty cell: none of the classes
        [0, 0, 0, 0, 0, 1],
    ]
    assert table.missing == []


def test_class_columns_keep_the_header_order_and_find_the_path_column_by_name(tmp_path):
    images(tmp_path / "img", "a.png", "b.jpeg")
    csv_file = write(
        tmp_path / "img" / "train.CSV", "zebra,FileName,ant\n 1 ,a.png,0\n0,b.jpeg,1\n"
    )
    table = read_label_csv(csv_file, tmp_path)
    assert table.layout == "columns"
    assert table.classes == ["zebra", "ant"]
    assert table.keys == ["a.png", "b.jpeg"] and table.targets.tolist() == [[1, 0], [0, 1]]
    assert is_label_csv(csv_file) and not is_label_csv(tmp_path / "list.txt")


def test_paths_resolve_next_to_the_csv_then_in_root_and_may_be_absolute(tmp_path):
    root = tmp_path / "root"
    images(root, "x.png", "deep/y.png", "z.JPG")
    images(tmp_path / "meta", "x.png")
    csv_file = write(
        tmp_path / "meta" / "l.csv",
        f"img,cat,dog\nx.png,1,0\ndeep/y.png,0,1\n{root / 'x.png'},1,1\nz,1,1\n",
    )
    table = read_label_csv(csv_file, root)  # column 0 holds paths when no header names them
    assert table.keys == ["x.png", "deep/y.png", str(root / "x.png"), "z"]
    assert table.paths == [
        str(tmp_path / "meta" / "x.png"),  # the CSV's folder first
        str(root / "deep/y.png"),
        str(root / "x.png"),
        str(root / "z.JPG"),
    ]


def test_skip_missing_drops_and_lists_the_missing_images(tmp_path):
    images(tmp_path, "a.png", "c.png")
    csv_file = write(tmp_path / "l.csv", "path,tags\na.png,cat\nb.png,dog\nc.png,dog\n")
    table = read_label_csv(csv_file, tmp_path, skip_missing=True)
    assert table.keys == ["a.png", "c.png"] and table.lines == [2, 4]
    assert table.missing == ["b.png"] and table.targets.tolist() == [[1, 0], [0, 1]]


def test_given_classes_fix_the_columns_of_the_targets(tmp_path):
    images(tmp_path, "a.png", "b.png")
    csv_file = write(tmp_path / "l.csv", "path,tags\na.png,dog\nb.png,\n")
    table = read_label_csv(csv_file, tmp_path, classes=["cat", "dog", "fox"])
    assert table.classes == ["cat", "dog", "fox"]
    assert table.targets.tolist() == [[0, 1, 0], [0, 0, 0]]
    columns = write(tmp_path / "c.csv", "path,cat,dog\na.png,1,0\nb.png,0,1\n")
    assert read_label_csv(columns, tmp_path, classes=["cat", "dog"]).classes == ["cat", "dog"]


BAD_ROWS = [  # (CSV text, the message after "FILE:LINE: "), the images a.png and b.png exist
    (
        "path,cat,dog,fox\na.png,1,0,0\nb.png,1,0\n",
        3,
        "expected 4 cells (path + 3 class columns), got 3",
    ),
    (
        "path,tags\na.png,cat\nb.png,cat,dog\n",
        3,
        "expected 2 cells (path + tags), got 3; separate a cell's labels with spaces or ';', "
        "or quote the cell",
    ),
    ("path,cat,dog\na.png,1,0\n\n b.png ,0, 2\n", 4, "column 'dog' must be 0 or 1, got '2'"),
    ("path,cat,dog\na.png,1,yes\n", 2, "column 'dog' must be 0 or 1, got 'yes'"),
    ("path,cat,dog\na.png,1,\n", 2, "column 'dog' must be 0 or 1, got ''"),
    ("path,cat,dog\na.png,1,0\n  ,0,1\n", 3, "the path cell (column 'path') is empty"),
    (
        "path,tags\na.png,cat\nb.png,dog\na.png,dog\n",
        4,
        "'a.png' is listed twice (first on line 2)",
    ),
    (
        'path,tags\n"a.png","cat\ndog"\nb.png,fox\nb.png,cat\n',
        5,
        "'b.png' is listed twice (first on line 4)",
    ),  # a quoted cell spans lines 2-3
    ("path,cat,\na.png,1,0\n", 1, "class column 2 has no name in the header"),
    (
        "path,cat,dog,cat\na.png,1,0,0\n",
        1,
        "class 'cat' is in the header twice (class columns 1 and 3)",
    ),
    (
        "path\na.png\n",
        1,
        "the header has only a path column; expected 'path,tags' or 'path,CLASS1,CLASS2,...'",
    ),
    (
        "path,tags\na.png,cat\n\xff\n",
        3,
        "not UTF-8 (invalid start byte at byte 20); save the file as UTF-8",
    ),
]


@pytest.mark.parametrize(("text", "line", "message"), BAD_ROWS)
def test_a_bad_row_is_one_line_naming_file_and_line(tmp_path, text, line, message):
    images(tmp_path, "a.png", "b.png")
    csv_file = tmp_path / "labels.csv"
    csv_file.write_bytes(text.encode("utf-8") if "\xff" not in text else text.encode("latin-1"))
    with pytest.raises(ImgclsError) as err:
        read_label_csv(csv_file, tmp_path)
    assert str(err.value) == f"{csv_file}:{line}: {message}"


def test_a_missing_image_names_the_key_the_line_and_the_folders(tmp_path):
    root = tmp_path / "root"
    images(root, "a.png")
    csv_file = write(tmp_path / "meta" / "l.csv", "path,tags\na.png,cat\n\nb.png,dog\n")
    with pytest.raises(ImgclsError) as err:
        read_label_csv(csv_file, root)
    assert str(err.value) == (
        f"image file not found: b.png (listed in {csv_file}:4; looked in {csv_file.parent} or "
        f"{root})"
    )
    csv_file = write(tmp_path / "l.csv", "image_name,tags\nnone_such,cat\n")
    with pytest.raises(ImgclsError) as err:
        read_label_csv(csv_file, tmp_path)
    assert str(err.value).startswith(
        f"image file not found: none_such (listed in {csv_file}:2; looked in {tmp_path}, also "
        "adding .jpg, .jpeg, .png"
    )


def test_labels_must_be_the_given_classes(tmp_path):
    images(tmp_path, "a.png", "b.png")
    tags = write(tmp_path / "t.csv", "path,tags\na.png,cat\nb.png,dog fox\n")
    with pytest.raises(ImgclsError) as err:
        read_label_csv(tags, tmp_path, classes=["cat", "dog"])
    assert (
        str(err.value) == f"{tags}:3: label 'fox' is not one of the 2 expected classes (cat, dog)"
    )
    columns = write(tmp_path / "c.csv", "path,dog,cat\na.png,1,0\nb.png,0,1\n")
    with pytest.raises(ImgclsError) as err:
        read_label_csv(columns, tmp_path, classes=["cat", "dog"])
    assert str(err.value) == (
        f"{columns}:1: the class columns do not match the 2 expected classes (same names in a "
        "different order)"
    )
    with pytest.raises(ImgclsError, match=r"c.csv:1: .* \(missing \['fox'\], extra \[\]\)$"):
        read_label_csv(columns, tmp_path, classes=["dog", "cat", "fox"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "label file {f} has no header row; expected e.g. 'image_name,tags' or 'path,cat,dog'"),
        (
            "\n ,\n",
            "label file {f} has no header row; expected e.g. 'image_name,tags' or 'path,cat,dog'",
        ),
        ("path,tags\n\n", "label file {f} lists no images (a header and no rows)"),
        (
            "path,tags\na.png,cat\nb.png,cat\n",
            "{f}: 1 class(es) ['cat']; a classifier needs two or more classes",
        ),
        (
            "path,tags\na.png,\nb.png,\n",
            "{f}: 0 class(es) []; a classifier needs two or more classes",
        ),
    ],
)
def test_a_file_without_usable_rows_is_one_line_naming_it(tmp_path, text, message):
    images(tmp_path, "a.png", "b.png")
    csv_file = write(tmp_path / "l.csv", text)
    with pytest.raises(ImgclsError) as err:
        read_label_csv(csv_file, tmp_path)
    assert str(err.value) == message.format(f=csv_file)


def test_an_unreadable_or_absent_file_is_one_line_naming_it(tmp_path):
    with pytest.raises(ImgclsError) as err:
        read_label_csv(tmp_path / "nope.csv", tmp_path)
    assert str(err.value) == f"label file not found: {tmp_path / 'nope.csv'}"
    with pytest.raises(ImgclsError, match=r"^cannot read label file .*folder\.csv: "):
        read_label_csv((tmp_path / "folder.csv").mkdir() or tmp_path / "folder.csv", tmp_path)
    csv_file = write(tmp_path / "l.csv", "path,tags\na.png,cat\n")
    with pytest.raises(ImgclsError) as err:
        read_label_csv(csv_file, tmp_path, skip_missing=True)
    assert (
        str(err.value) == f"none of the 1 images listed in {csv_file} exists (looked in {tmp_path})"
    )
