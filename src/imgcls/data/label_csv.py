"""Multi-label CSV files: a header, then one row per image with the labels it has (any number).

The multi-label sibling of :mod:`imgcls.data.listfile`, in the two layouts public data sets ship:
*tags* (Kaggle Planet's ``image_name,tags`` with ``haze primary`` in a cell) and *columns*
(``path,cat,dog`` with a 0/1 cell per class). :func:`read_label_csv` reads both.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcls.data.folder import IMAGE_EXTENSIONS
from imgcls.errors import ImgclsError, short_repr

# Header names of the path column (compared lower-cased); without one, column 0 holds the paths.
PATH_HEADERS = ("path", "image", "image_name", "image_id", "file", "filename", "file_name", "id")
TAG_SEPARATOR = re.compile(r"[\s;]+")  # "haze primary", "cat;dog", "cat; dog"
Row = tuple[int, list[str]]  # (line the row starts on, its cells)


@dataclass
class LabelTable:
    """What a label CSV says, one entry per image that exists, in file order."""

    keys: list[str]  # the path cells as written (the names split.json records)
    paths: list[str]  # each key resolved to an existing file
    targets: np.ndarray  # uint8 [N, K] multi-hot
    classes: list[str]
    lines: list[int]  # each entry's line in the file (the header's is 1)
    missing: list[str]  # keys left out because their file is missing (skip_missing=True)
    layout: str  # "tags" | "columns"


def is_label_csv(path: Path) -> bool:
    """Whether ``path`` names a label CSV rather than a list file (by its suffix)."""
    return Path(path).suffix.lower() == ".csv"


def read_label_csv(
    csv_file: Path,
    root: Path,
    *,
    classes: Sequence[str] | None = None,
    skip_missing: bool = False,
) -> LabelTable:
    """Parse a label CSV; the header tells the layout.

    The path column is the first header cell named one of :data:`PATH_HEADERS`, else column 0.
    One other column is *tags*: a cell lists the image's labels separated by spaces or ``;``
    (empty: none of the classes); classes are the sorted label names. Two or more are *columns*:
    the header names the classes (order kept) and each cell is ``0`` or ``1``. Given
    ``classes`` (a model's, a saved split's), the file must use those. Paths resolve as in a list
    file (the CSV's folder, then ``root``); a cell without an image suffix (Planet's ``train_0``)
    also tries each of :data:`IMAGE_EXTENSIONS`. A missing image is an error naming it, or, with
    ``skip_missing``, is left out and its key listed in ``missing``.

    >>> read_label_csv(Path("train_v2.csv"), Path("train-jpg")).classes  # doctest: +SKIP
    ['agriculture', 'artisinal_mine', ..., 'water']
    """
    header_line, header, rows = _read_rows(csv_file)
    path_col = _path_column(header)
    label_cols = [i for i in range(len(header)) if i != path_col]
    if not label_cols:
        raise ImgclsError(
            f"{csv_file}:{header_line}: the header has only a path column; "
            "expected 'path,tags' or 'path,CLASS1,CLASS2,...'"
        )
    layout = "tags" if len(label_cols) == 1 else "columns"
    if layout == "columns":
        names = _header_classes(csv_file, header_line, [header[i] for i in label_cols], classes)
    else:
        names = list(classes) if classes is not None else []
    entries = _entries(csv_file, header, rows, path_col, label_cols, names,
                       known=frozenset(names) if classes is not None else None)
    kept, paths, missing = _existing(csv_file, entries, root, skip_missing)
    if layout == "tags" and classes is None:
        names = sorted(set().union(*(labels for _, labels, _ in kept)))
    if len(names) < 2:
        raise ImgclsError(
            f"{csv_file}: {len(names)} class(es) {short_repr(names)}; a classifier "
            "needs two or more classes"
        )
    index = {name: i for i, name in enumerate(names)}
    targets = np.zeros((len(kept), len(names)), dtype=np.uint8)
    for row, (_, labels, _) in enumerate(kept):
        targets[row, [index[label] for label in labels]] = 1
    return LabelTable(
        keys=[key for key, _, _ in kept],
        paths=paths,
        targets=targets,
        classes=names,
        lines=[number for _, _, number in kept],
        missing=missing,
        layout=layout,
    )


Entry = tuple[str, set[str], int]  # (key as written, its labels, line)


def _entries(csv_file: Path, header: list[str], rows: list[Row], path_col: int,
             label_cols: list[int], names: list[str], known: frozenset[str] | None,
             ) -> list[Entry]:
    """Every row's key and labels, each checked: cell count, empty or repeated path, labels
    (tags: in ``known`` when given; columns: 0 or 1)."""
    tags = len(label_cols) == 1
    shape = "path + tags" if tags else f"path + {len(names)} class columns"
    first_line: dict[str, int] = {}
    entries: list[Entry] = []
    for number, cells in rows:
        if len(cells) != len(header):
            hint = ("; separate a cell's labels with spaces or ';', or quote the cell"
                    if tags and len(cells) > len(header) else "")
            raise ImgclsError(f"{csv_file}:{number}: expected {len(header)} cells ({shape}), "
                              f"got {len(cells)}{hint}")
        key = cells[path_col].strip()
        if not key:
            raise ImgclsError(f"{csv_file}:{number}: the path cell (column "
                              f"{short_repr(header[path_col])}) is empty")
        if key in first_line:
            raise ImgclsError(f"{csv_file}:{number}: {short_repr(key)} is listed twice "
                              f"(first on line {first_line[key]})")
        first_line[key] = number
        if tags:
            labels = _tags(csv_file, number, cells[label_cols[0]], names, known)
        else:
            labels = _flags(csv_file, number, [cells[i] for i in label_cols], names)
        entries.append((key, labels, number))
    return entries


def _existing(csv_file: Path, entries: list[Entry], root: Path, skip_missing: bool,
              ) -> tuple[list[Entry], list[str], list[str]]:
    """(entries whose image exists, their paths, keys of the missing ones); a missing image is
    an error naming it unless ``skip_missing``, and so is a file none of whose images exist."""
    base = csv_file.parent
    kept, paths, missing = [], [], []
    for entry in entries:
        path = _resolve(entry[0], base, root)
        if path is not None:
            kept.append(entry)
            paths.append(path)
        elif skip_missing:
            missing.append(entry[0])
        else:
            raise ImgclsError(
                f"image file not found: {entry[0]} (listed in {csv_file}:{entry[2]}; "
                f"looked in {_where(entry[0], base, root)})"
            )
    if not kept:
        raise ImgclsError(
            f"none of the {len(entries)} images listed in {csv_file} exists "
            f"(looked in {_where('', base, root)})"
        )
    return kept, paths, missing


def _read_rows(csv_file: Path) -> tuple[int, list[str], list[Row]]:
    """(header line, header cells stripped, data rows); rows of blank cells are left out."""
    try:
        data = csv_file.read_bytes()
    except FileNotFoundError:
        raise ImgclsError(f"label file not found: {csv_file}") from None
    except OSError as exc:
        raise ImgclsError(f"cannot read label file {csv_file}: {exc}") from None
    data = data.removeprefix(codecs.BOM_UTF8)  # utf-8-sig: Excel writes one
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ImgclsError(
            f"{csv_file}:{line}: not UTF-8 ({exc.reason} at byte {exc.start}); "
            "save the file as UTF-8"
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[Row] = []
    end = 0  # the last line read: a quoted cell may span lines, so a row starts after it
    try:
        for cells in reader:
            if any(cell.strip() for cell in cells):
                rows.append((end + 1, cells))
            end = reader.line_num
    except csv.Error as exc:
        raise ImgclsError(f"{csv_file}:{reader.line_num}: {exc}") from None
    if not rows:
        raise ImgclsError(
            f"label file {csv_file} has no header row; expected e.g. "
            "'image_name,tags' or 'path,cat,dog'"
        )
    (header_line, header), rows = rows[0], rows[1:]
    if not rows:
        raise ImgclsError(f"label file {csv_file} lists no images (a header and no rows)")
    return header_line, [cell.strip() for cell in header], rows


def _path_column(header: list[str]) -> int:
    return next((i for i, cell in enumerate(header) if cell.lower() in PATH_HEADERS), 0)


def _header_classes(
    csv_file: Path, line: int, names: list[str], classes: Sequence[str] | None
) -> list[str]:
    """The class columns' names, checked: none empty, none twice, ``classes`` when given."""
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if not name:
            raise ImgclsError(f"{csv_file}:{line}: class column {i + 1} has no name in the header")
        if name in seen:
            raise ImgclsError(
                f"{csv_file}:{line}: class {short_repr(name)} is in the header "
                f"twice (class columns {seen[name] + 1} and {i + 1})"
            )
        seen[name] = i
    if classes is not None and names != list(classes):
        missing = [c for c in classes if c not in seen]
        extra = [c for c in names if c not in classes]
        detail = (
            f"missing {short_repr(missing)}, extra {short_repr(extra)}"
            if missing or extra
            else "same names in a different order"
        )
        raise ImgclsError(
            f"{csv_file}:{line}: the class columns do not match the "
            f"{len(classes)} expected classes ({detail})"
        )
    return names


def _tags(
    csv_file: Path, line: int, cell: str, names: list[str], known: frozenset[str] | None
) -> set[str]:
    labels = {label for label in TAG_SEPARATOR.split(cell) if label}
    unknown = sorted(labels - known) if known is not None else []
    if unknown:
        raise ImgclsError(
            f"{csv_file}:{line}: label {short_repr(unknown[0])} is not one of the "
            f"{len(names)} expected classes ({_listing(names)})"
        )
    return labels


def _flags(csv_file: Path, line: int, cells: list[str], names: list[str]) -> set[str]:
    labels = set()
    for name, cell in zip(names, cells, strict=True):
        flag = cell.strip()
        if flag not in ("0", "1"):
            raise ImgclsError(
                f"{csv_file}:{line}: column {short_repr(name)} must be 0 or 1, "
                f"got {short_repr(flag)}"
            )
        if flag == "1":
            labels.add(name)
    return labels


def _listing(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... {len(names) - limit} more" if len(names) > limit else "")


def _guess_suffix(key: str) -> bool:
    # Ids with a dot ("1.2.840") have a "suffix" too; only an image suffix means "a file name".
    return os.path.splitext(key)[1].lower() not in IMAGE_EXTENSIONS


def _resolve(key: str, base: Path, root: Path) -> str | None:
    """``key`` in the CSV's folder, else in ``root`` (an absolute key as is); a key without an
    image suffix then tries each image suffix, lower- and upper-case, in the same order."""
    folders = (base, root)
    for folder in folders:
        path = os.path.join(folder, key)
        if os.path.isfile(path):
            return path
    if _guess_suffix(key):
        for folder in folders:
            for ext in IMAGE_EXTENSIONS:
                for suffix in (ext, ext.upper()):
                    path = os.path.join(folder, key + suffix)
                    if os.path.isfile(path):
                        return path
    return None


def _where(key: str, base: Path, root: Path) -> str:
    same = os.path.abspath(base) == os.path.abspath(root)
    where = str(base) if same else f"{base} or {root}"
    if key and _guess_suffix(key):
        where += f", also adding {', '.join(IMAGE_EXTENSIONS)}"
    return where
