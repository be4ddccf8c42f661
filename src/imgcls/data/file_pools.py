"""Which files of a folder of class folders, a list file or a label CSV go to train, validation
and test.

The pool (every file, by its split.json key), seeded stratified parts carved from it
(``data.test_fraction``, ``data.val_fraction`` or ``data.folds``), a saved split re-applied to it
exactly, and unreadable images dropped. A label CSV's parts are stratified over its labels
(iterative stratification, :mod:`imgcls.data.multilabel_splits`); :mod:`imgcls.data.sources`
turns the parts into datasets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from imgcls.config import DataConfig
from imgcls.data.folder import Sample, relative_key, scan_folder, verify_samples
from imgcls.data.label_csv import read_label_csv
from imgcls.data.listfile import read_list_file
from imgcls.data.multilabel_splits import multilabel_holdout, multilabel_kfold
from imgcls.data.splits import kfold_split, stratified_split
from imgcls.errors import ImgclsError

Pairs = list[tuple[str, Sample]]  # (split.json key, (path, label))


class Parts(NamedTuple):
    """The membership of a file-based source: (key, sample) pairs per part."""

    train: Pairs
    val: Pairs | None
    test: Pairs | None  # carved by data.test_fraction


def folder_pool(
    path: Path, cfg: DataConfig, seed: int, links: list[str]
) -> tuple[list[str], dict[str, Sample], Parts]:
    """Scan a folder; returns (classes, every file by key, default membership), and adds the
    symlinks it did not follow to ``links``. A ``train/`` folder comes with its own ``val/``
    (else ``test/``) folder for holdout validation; a single folder of class folders is split
    by data.test_fraction and data.val_fraction."""
    train_dir = path / "train"
    if not train_dir.is_dir():
        samples, classes = scan_folder(path, dropped=links)
        pairs = [(relative_key(p, path), (p, y)) for p, y in samples]
        return classes, dict(pairs), carve(pairs, cfg, seed, classes, str(path))
    if cfg.test_fraction > 0:
        raise ImgclsError(f"data.test_fraction={cfg.test_fraction:g}: {path} is already split "
                          "into train/ (val/, test/) folders; use it with a single folder of "
                          "class folders")
    train_samples, classes = scan_folder(train_dir, dropped=links)
    val_dir = None
    if cfg.val_split == "holdout" and not cfg.folds:  # folds validate on a part of train/
        val_dir = next((d for d in (path / "val", path / "test") if d.is_dir()), None)
    val_samples = scan_folder(val_dir, classes, links)[0] if val_dir else []
    train = [(relative_key(p, path), (p, y)) for p, y in train_samples]
    val = [(relative_key(p, path), (p, y)) for p, y in val_samples]
    pool = dict(train + val)
    if val_dir is None:
        return classes, pool, carve(train, cfg, seed, classes, str(path))
    return classes, pool, Parts(train, val or None, None)


def list_pool(
    path: Path, cfg: DataConfig, seed: int
) -> tuple[list[str], dict[str, Sample], Parts, list[str]]:
    root = Path(cfg.root).expanduser().absolute()
    keys, samples, classes, missing = read_list_file(path, root, cfg.skip_bad_images)
    pairs = list(zip(keys, samples, strict=True))
    return classes, dict(pairs), carve(pairs, cfg, seed, classes, str(path)), missing


def csv_pool(
    path: Path, cfg: DataConfig, seed: int, classes: list[str] | None = None,
    training: bool = True,
) -> tuple[list[str], dict[str, Sample], Parts, list[str]]:
    """A label CSV's images with their multi-hot rows (tuples of 0/1), carved into parts; for
    ``training`` every class must have images in the training part. ``classes``: a model's,
    which the file must use (:func:`read_label_csv`)."""
    root = Path(cfg.root).expanduser().absolute()
    table = read_label_csv(path, root, classes=classes, skip_missing=cfg.skip_bad_images)
    rows = [tuple(int(v) for v in row) for row in table.targets]
    pairs: Pairs = list(zip(table.keys, zip(table.paths, rows, strict=True), strict=True))
    parts = carve(pairs, cfg, seed, table.classes, str(path))
    for k in sorted(set(range(len(table.classes))) - _present(parts.train) if training else []):
        first = next((i for i, row in enumerate(rows) if row[k]), None)
        if first is None:  # a class column of zeros
            raise ImgclsError(f"{path}:1: class {table.classes[k]!r} has no image; a model "
                              "cannot learn a class it never sees")
        raise ImgclsError(f"{path}:{table.lines[first]}: class {table.classes[k]!r} has no image "
                          "in the training part (its images all went to validation or test); "
                          "a model cannot learn a class it never sees")
    return table.classes, dict(pairs), parts, table.missing


def carve(pairs: Pairs, cfg: DataConfig, seed: int, classes: list[str], where: str) -> Parts:
    """Seeded stratified test (data.test_fraction) and validation (data.val_fraction, both of
    the whole pool, or fold data.fold of data.folds of what the test part leaves) parts; with
    a test part, every class must keep images in each part."""
    test = None
    labels = _present(pairs)  # list files may number classes they do not use
    if cfg.test_fraction > 0:
        pairs, test = _holdout(pairs, cfg.test_fraction, seed)
        _every_class(test, labels, classes, f"data.test_fraction={cfg.test_fraction:g}", where)
    val = None
    if cfg.folds:
        folds = multilabel_kfold if _multilabel(pairs) else kfold_split
        train_idx, val_idx = folds(_labels(pairs), cfg.folds, cfg.fold, seed, classes)
        pairs, val = [pairs[i] for i in train_idx], [pairs[i] for i in val_idx]
    elif cfg.val_split == "holdout" and cfg.val_fraction > 0:
        pairs, val = _holdout(pairs, cfg.val_fraction / (1.0 - cfg.test_fraction), seed)
        if test is not None:
            _every_class(val, labels, classes, f"data.val_fraction={cfg.val_fraction:g}", where)
    if test is not None:
        _every_class(pairs, labels, classes, "the training part", where)
    return Parts(pairs, val or None, test)


def _every_class(pairs: Pairs, labels: set[int], classes: list[str], what: str,
                 where: str) -> None:
    empty = [classes[k] for k in sorted(labels - _present(pairs))]
    if empty:
        raise ImgclsError(f"{what} leaves class {empty[0]!r} of {where} without images "
                          f"({len(empty)} class(es) empty); it needs more images per class")


def _holdout(pairs: Pairs, fraction: float, seed: int) -> tuple[Pairs, Pairs]:
    split = multilabel_holdout if _multilabel(pairs) else stratified_split
    train_idx, val_idx = split(_labels(pairs), fraction, seed)
    return [pairs[i] for i in train_idx], [pairs[i] for i in val_idx]


def _multilabel(pairs: Pairs) -> bool:
    return bool(pairs) and isinstance(pairs[0][1][1], tuple)


def _labels(pairs: Pairs) -> Any:
    """Class indices, or the multi-hot rows as a uint8 [N, K] array."""
    if _multilabel(pairs):
        return np.array([y for _, (_, y) in pairs], dtype=np.uint8)
    return [y for _, (_, y) in pairs]


def _present(pairs: Pairs) -> set[int]:
    """The classes with at least one image in ``pairs``."""
    if _multilabel(pairs):
        return {int(k) for k in np.flatnonzero(_labels(pairs).any(axis=0))}
    return {y for _, (_, y) in pairs}


def apply_record(record: dict, pool: dict[str, Sample], skipped: set[str], where: Path) -> Parts:
    """Exactly the record's membership; files the source no longer has are an error."""
    parts: list[Pairs] = []
    for part in ("train", "val", "test"):
        keys = [k for k in record.get(part, []) if k not in skipped]
        gone = [k for k in keys if k not in pool]
        if gone:
            more = f" (and {len(gone) - 1} more)" if len(gone) > 1 else ""
            raise ImgclsError(
                f"file {gone[0]} of the saved split ({part}) is no longer in {where}{more}"
            )
        parts.append([(k, pool[k]) for k in keys])
    return Parts(parts[0], parts[1] or None, parts[2] or None)


def verify_pairs(pairs: Pairs, max_pixels: int) -> tuple[Pairs, list[str]]:
    _, bad = verify_samples([s for _, s in pairs], max_pixels)
    bad_set = set(bad)
    return [(k, s) for k, s in pairs if s[0] not in bad_set], bad
