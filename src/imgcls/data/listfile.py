"""List files: one ``relative/path label`` per line (``#`` comments and blank lines ignored).

One reader for training (a label on every line) and ``imgcls predict`` (labels optional):
:func:`list_lines` and :func:`split_entry`."""

from __future__ import annotations

import os
import re
from pathlib import Path

from imgcls.errors import ImgclsError

Entry = tuple[str, str, str, int]  # (key as written in the file, resolved path, label, line)

INDEX = re.compile(r"-?[0-9]+")  # what counts as an integer label (signed, to refuse -1)


def list_lines(list_file: Path) -> list[tuple[int, str]]:
    """``(line number, text)`` of every entry: stripped, blank lines and ``#`` comments left
    out (a BOM too); an unreadable file is one line naming it."""
    try:
        lines = list_file.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise ImgclsError(f"list file not found: {list_file}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ImgclsError(f"cannot read list file {list_file}: {exc}") from None
    stripped = ((number, raw.strip()) for number, raw in enumerate(lines, start=1))
    return [(number, line) for number, line in stripped if line and not line.startswith("#")]


def split_entry(line: str, base: Path) -> tuple[str, str | None]:
    """``(path as written, label or None)``. The label is the last word, so a path may contain
    spaces; a line that names an existing file as a whole (``my photo.jpg``) is a path without
    a label."""
    if os.path.isfile(os.path.join(base, line)):
        return line, None
    parts = line.rsplit(None, 1)
    return (parts[0], parts[1]) if len(parts) == 2 else (line, None)


def read_list_file(
    list_file: Path, root: Path, skip_missing: bool = False
) -> tuple[list[str], list[tuple[str, int]], list[str], list[str]]:
    """Parse a list file; returns (keys, samples, classes, missing).

    ``keys`` are the paths as written (the names split.json records), ``samples`` the resolved
    ``(path, label)`` pairs aligned with them. The path is split from the label on the *last*
    whitespace, so paths may contain spaces. A path resolves against the list file's folder, else
    against ``root``. Labels are class names (classes = sorted unique names) or, when the first
    label is an integer, indices (classes = "0".."max"), see :func:`label_indices`. A missing
    image is an error naming it, or, with ``skip_missing``, is dropped and its key returned in
    ``missing``.
    """
    base = list_file.parent
    entries: list[Entry] = []
    missing: list[str] = []
    first_line: dict[str, int] = {}
    for number, line in list_lines(list_file):
        key, label = split_entry(line, base)
        if label is None:
            raise ImgclsError(
                f"{list_file}:{number}: expected 'relative/path label', got {line!r}"
            )
        if key in first_line:
            raise ImgclsError(
                f"{list_file}:{number}: {key!r} is listed twice (first on line {first_line[key]})"
            )
        first_line[key] = number
        path = _resolve(key, base, root)
        if path is None:
            if skip_missing:
                missing.append(key)
                continue
            where = str(base) if root == base else f"{base} or {root}"
            raise ImgclsError(
                f"image file not found: {key} (listed in {list_file}:{number}; looked in {where})"
            )
        entries.append((key, path, label, number))
    if not entries:
        raise ImgclsError(f"list file {list_file} lists no images")

    classes, ints = label_indices(list_file, [(label, number) for *_, label, number in entries])
    keys = [entry[0] for entry in entries]
    samples = [(entry[1], label) for entry, label in zip(entries, ints, strict=True)]
    return keys, samples, classes, missing


def label_indices(list_file: Path, labels: list[tuple[str, int]]) -> tuple[list[str], list[int]]:
    """(classes, each entry's class index) from ``(label, line number)`` pairs.

    The first label decides the kind. An integer makes every label a class index: label L
    implies classes 0..L, so a negative label, a label that is not an integer, or a largest
    label implying more classes without images than with (a stray 100000 would build a
    100,001-class model) is refused, naming the line. Otherwise labels are class names. Either
    way the images must span two or more classes.
    """
    first, line = labels[0]
    if INDEX.fullmatch(first):
        for label, number in labels:
            if not INDEX.fullmatch(label):
                raise ImgclsError(f"{list_file}:{number}: label {label!r} is not a class index, "
                                  f"but line {line}'s is; label with indices 0..K-1 throughout, "
                                  "or with class names throughout")
            if label.startswith("-"):
                raise ImgclsError(f"{list_file}:{number}: label {label} is negative; class "
                                  "indices run 0..K-1")
            if len(label.lstrip("0")) > 9:  # int() refuses 4,301+ digits; no data set comes close
                raise ImgclsError(f"{list_file}:{number}: label {label[:30]} implies over 10^9 "
                                  "classes; class indices run 0..K-1")
        ints = [int(label) for label, _ in labels]
        top = max(range(len(ints)), key=ints.__getitem__)
        used = len(set(ints))
        if 2 * used < ints[top] + 1:
            raise ImgclsError(
                f"{list_file}:{labels[top][1]}: label {ints[top]} implies {ints[top] + 1} "
                f"classes, but only {used} have images; at most half of the classes 0..K-1 "
                "may have none"
            )
        classes = [str(i) for i in range(ints[top] + 1)]
    else:
        classes = sorted({label for label, _ in labels})
        index = {name: i for i, name in enumerate(classes)}
        ints = [index[label] for label, _ in labels]
    if len(set(ints)) < 2:
        raise ImgclsError(f"{list_file}:{line}: every image has label {first!r}; a classifier "
                          "needs two or more classes")
    return classes, ints


def _resolve(key: str, base: Path, root: Path) -> str | None:
    for folder in (base, root):
        path = os.path.join(folder, key)
        if os.path.isfile(path):
            return path
    return None
