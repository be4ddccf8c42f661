"""List files: one ``relative/path label`` per line (``#`` comments and blank lines ignored)."""

from __future__ import annotations

import os
from pathlib import Path

from imgcls.errors import ImgclsError

Entry = tuple[str, str, str]  # (key as written in the file, resolved path, label text)


def read_list_file(
    list_file: Path, root: Path, skip_missing: bool = False
) -> tuple[list[str], list[tuple[str, int]], list[str], list[str]]:
    """Parse a list file; returns (keys, samples, classes, missing).

    ``keys`` are the paths as written (the names split.json records), ``samples`` the resolved
    ``(path, label)`` pairs aligned with them. The path is split from the label on the *last*
    whitespace, so paths may contain spaces. A path resolves against the list file's folder, else
    against ``root``. Labels are class names (classes = sorted unique names) or, when every label
    is a non-negative integer, indices (classes = "0".."max"). A missing image is an error naming
    it, or, with ``skip_missing``, is dropped and its key returned in ``missing``.
    """
    try:
        lines = list_file.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise ImgclsError(f"list file not found: {list_file}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ImgclsError(f"cannot read list file {list_file}: {exc}") from None

    base = list_file.parent
    entries: list[Entry] = []
    missing: list[str] = []
    first_line: dict[str, int] = {}
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            raise ImgclsError(
                f"{list_file}:{number}: expected 'relative/path label', got {line!r}"
            )
        key, label = parts
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
        entries.append((key, path, label))
    if not entries:
        raise ImgclsError(f"list file {list_file} lists no images")

    labels = [label for _, _, label in entries]
    if all(label.isascii() and label.isdigit() for label in labels):
        ints = [int(label) for label in labels]
        classes = [str(i) for i in range(max(ints) + 1)]
    else:
        classes = sorted(set(labels))
        index = {name: i for i, name in enumerate(classes)}
        ints = [index[label] for label in labels]
    keys = [key for key, _, _ in entries]
    samples = [(path, label) for (_, path, _), label in zip(entries, ints, strict=True)]
    return keys, samples, classes, missing


def _resolve(key: str, base: Path, root: Path) -> str | None:
    for folder in (base, root):
        path = os.path.join(folder, key)
        if os.path.isfile(path):
            return path
    return None
