"""Seeded stratified train/validation splits and the ``split.json`` record that replays them."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Subset

from imgcls.errors import ImgclsError
from imgcls.files import atomic_write_text

SPLIT_VERSION = 1
KINDS = ("indices", "files")


class LabeledSubset(Subset):
    """A ``Subset`` that keeps ``targets`` (aligned with its own indices) and ``classes``."""

    def __init__(self, dataset: Dataset, indices: Sequence[int], targets: Sequence[int],
                 classes: Sequence[str]):
        super().__init__(dataset, list(indices))
        self.targets: list[int] = [int(targets[i]) for i in self.indices]
        self.classes: list[str] = list(classes)


def stratified_split(
    labels: Sequence[int], fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Hold out ``round(n_c * fraction)`` indices of every class c; returns sorted (train, val).

    A class with >= 2 items gives at least 1 to validation when ``fraction > 0`` and always keeps
    at least 1 for training. Each class is shuffled by its own ``numpy`` generator seeded with
    ``(seed, class)``, so the result is the same on every platform and one class's split does not
    depend on the others.
    """
    if not 0.0 <= fraction < 1.0:
        raise ImgclsError(f"validation fraction must be in [0, 1), got {fraction}")
    labels_arr = np.asarray(labels, dtype=np.int64)
    val: list[int] = []
    if fraction > 0 and len(labels_arr):
        for label in np.unique(labels_arr):
            members = np.flatnonzero(labels_arr == label)
            n = len(members)
            n_val = min(max(round(n * fraction), 1 if n >= 2 else 0), n - 1)
            rng = np.random.default_rng([int(seed), int(label)])
            val.extend(members[rng.permutation(n)[:n_val]].tolist())
    val_set = set(val)
    train = [i for i in range(len(labels_arr)) if i not in val_set]
    return train, sorted(val)


def kfold_split(
    labels: Sequence[int], folds: int, fold: int, seed: int, classes: Sequence[str] = ()
) -> tuple[list[int], list[int]]:
    """Fold ``fold`` of ``folds`` seeded stratified folds (scikit-learn's StratifiedKFold,
    shuffled): returns sorted (train, val) indices. The folds of one seed are disjoint and
    cover every index once; every class needs at least ``folds`` items, so that no fold lacks
    it.

    >>> kfold_split([0, 0, 1, 1], folds=2, fold=0, seed=0)
    ([0, 3], [1, 2])
    """
    from sklearn.model_selection import StratifiedKFold  # slow to import; only folds need it

    labels_arr = np.asarray(labels, dtype=np.int64)
    values, counts = np.unique(labels_arr, return_counts=True)
    if len(values) and counts.min() < folds:
        small = int(values[counts.argmin()])
        name = repr(classes[small]) if small < len(classes) else str(small)
        raise ImgclsError(f"data.folds={folds}: class {name} has only {counts.min()} image(s); "
                          "each class needs at least one per fold")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=int(seed))
    train, val = list(splitter.split(np.zeros(len(labels_arr)), labels_arr))[fold]
    return sorted(train.tolist()), sorted(val.tolist())


def make_record(source: str, kind: str, seed: int, val_fraction: float, classes: Sequence[str],
                train: Sequence[Any], val: Sequence[Any]) -> dict[str, Any]:
    """Build a ``split.json`` record (file keys or integer indices, in dataset order)."""
    return {
        "version": SPLIT_VERSION,
        "source": str(source),
        "kind": kind,
        "seed": int(seed),
        "val_fraction": float(val_fraction),
        "classes": list(classes),
        "train": list(train),
        "val": list(val),
    }


def check_record(record: Any, where: str = "split record") -> dict[str, Any]:
    """Validate a record's shape; raises ImgclsError naming ``where`` and the bad field."""
    def bad(what: str) -> ImgclsError:
        return ImgclsError(f"{where} is malformed: {what}")

    if not isinstance(record, dict):
        raise bad("expected a JSON object")
    missing = [k for k in ("version", "kind", "classes", "train", "val") if k not in record]
    if missing:
        raise bad(f"missing key(s) {', '.join(missing)}")
    if record["version"] != SPLIT_VERSION:
        raise bad(f"unsupported version {record['version']!r} (expected {SPLIT_VERSION})")
    kind = record["kind"]
    if kind not in KINDS:
        raise bad(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    classes = record["classes"]
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise bad("classes must be a list of strings")
    item = str if kind == "files" else int
    parts = [p for p in ("train", "val", "test") if p in record]  # test: data.test_fraction
    for part in parts:
        entries = record[part]
        if not isinstance(entries, list) or not all(
            isinstance(e, item) and not isinstance(e, bool) for e in entries
        ):
            raise bad(f"{part} must be a list of {'paths' if kind == 'files' else 'integers'}")
    for i, a in enumerate(parts):
        for b in parts[i + 1:]:
            overlap = set(record[a]) & set(record[b])
            if overlap:
                raise bad(f"{len(overlap)} entries are in both {a} and {b}, e.g. "
                          f"{min(overlap)!r}")
    return record


def check_classes(record: dict[str, Any], classes: Sequence[str], source: str) -> None:
    """The data source must have exactly the record's classes, in the same order."""
    if list(record["classes"]) == list(classes):
        return
    missing = [c for c in record["classes"] if c not in classes]
    extra = [c for c in classes if c not in record["classes"]]
    detail = (
        f"missing from the data: {missing or 'none'}; not in the split record: {extra or 'none'}"
        if missing or extra
        else "same names in a different order"
    )
    raise ImgclsError(f"classes of {source} do not match the saved split ({detail})")


def save_split(record: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write a record as JSON: one key per line, lists kept compact (they can be 50k long)."""
    check_record(record)
    body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in record.items())
    atomic_write_text(Path(path), "{\n" + body + "\n}\n")  # never a half-written split.json


def load_split(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a ``split.json``; a missing or malformed file is an ImgclsError naming it."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ImgclsError(f"split file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImgclsError(f"cannot read split file {path}: {exc}") from None
    return check_record(record, where=f"split file {path}")
