"""Pick the data source named by ``data.source`` and build train/validation/test datasets.

Sources: ``digits`` (scikit-learn's bundled 8x8 digits: no download), ``cifar10`` / ``cifar100``
(torchvision, or a path to an extracted copy), a folder of class folders (optionally with
``train/`` and ``val/`` or ``test/``), or a ``.txt`` list file.
Datasets yield ``(PIL.Image in RGB mode, int label)`` with no transforms, and expose ``targets``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from torch.utils.data import Dataset

from imgcls.config import DataConfig
from imgcls.data import digits
from imgcls.data.cifar import CLASSES as CIFAR_CLASSES
from imgcls.data.cifar import MEAN_STD, NATIVE_SIZE, detect_cifar_folder, load_cifar
from imgcls.data.folder import (
    ImageFileDataset,
    Sample,
    find_class_folders,
    relative_key,
    scan_folder,
    verify_samples,
)
from imgcls.data.listfile import read_list_file
from imgcls.data.splits import (
    LabeledSubset,
    check_classes,
    check_record,
    make_record,
    stratified_split,
)
from imgcls.errors import ImgclsError

EXPECTED = "expected digits, cifar10, cifar100, a folder of class folders or a list file"


@dataclass
class DataSplit:
    """Training and validation sets plus what the rest of imgcls needs to know about them."""

    train: Dataset  # map-style, yields (PIL.Image RGB, int label); no transforms applied
    val: Dataset | None  # None when the validation membership is empty (e.g. val_fraction == 0)
    classes: list[str]
    split_record: dict[str, Any]  # JSON-serialisable; saved as runs/NAME/split.json
    native_size: int | None = None  # every image is this size (32 for CIFAR); None for files
    mean_std: tuple[list[float], list[float]] | None = None  # known normalisation stats
    skipped: list[str] = field(default_factory=list)  # bad images skipped (skip_bad_images)


class _Source(NamedTuple):
    kind: str  # digits | cifar | folder | list
    path: Path  # CIFAR root, data folder or list file
    cifar: str = ""  # cifar10 | cifar100
    base_folder: str | None = None  # the CIFAR batches folder's name under `path`


Pairs = list[tuple[str, Sample]]  # (split.json key, (path, label))


# --------------------------------------------------------------------------- public API


def create_datasets(cfg: DataConfig, seed: int, split_record: dict | None = None) -> DataSplit:
    """Training and validation sets for ``cfg.source``.

    Validation is the dataset's ``val/`` (else ``test/``) folder when there is one, else a seeded
    stratified ``cfg.val_fraction`` holdout. Given ``split_record`` (a saved split.json), its
    train/val membership is reused exactly; a listed file that is gone, or classes that differ,
    is an ImgclsError.
    """
    return _build(cfg, seed, split_record, verify_train=True)


def create_eval_dataset(
    cfg: DataConfig, split: str, seed: int, split_record: dict | None = None
) -> tuple[Dataset, list[str]]:
    """The ``val`` set training used (from ``split_record`` or recomputed from ``seed``) or the
    ``test`` set (``PATH/test`` for folders, the official test batch for CIFAR, the fixed fifth
    of the digits); returns
    (dataset, classes). List files have no test split."""
    if split == "val":
        data = _build(cfg, seed, split_record, verify_train=False)
        if data.val is None:
            raise ImgclsError(
                f"data source {cfg.source} has no validation set "
                "(data.val_fraction is 0 and there is no val folder)"
            )
        return data.val, data.classes
    if split != "test":
        raise ImgclsError(f"unknown evaluation split {split!r}; expected val or test")
    if split_record is not None:
        check_record(split_record)
    src = _find_source(cfg)
    if src.kind == "digits":
        test: Any = digits.Digits("test")
        classes = list(test.classes)
    elif src.kind == "cifar":
        test = load_cifar(src.cifar, src.path, False, cfg.download, src.base_folder)
        classes = list(test.classes)
    elif src.kind == "folder":
        test_dir, train_dir = src.path / "test", src.path / "train"
        if not (train_dir.is_dir() and test_dir.is_dir()):
            raise ImgclsError(
                f"no test split in {src.path}: expected {test_dir} next to {train_dir}"
            )
        classes = find_class_folders(train_dir)
        samples, _ = scan_folder(test_dir, classes)
        skipped: list[str] = []
        if cfg.skip_bad_images:
            samples, skipped = verify_samples(samples)
        test = ImageFileDataset(samples, classes, root=str(test_dir))
        test.skipped = skipped
    else:
        raise ImgclsError(
            f"list file {src.path} has no test split; evaluate split val, or pass a list file "
            "of the test images as data.source with data.val_fraction for the holdout"
        )
    if split_record is not None:
        check_classes(split_record, classes, str(src.path))
    return test, classes


def from_dataset(
    train: Dataset,
    val: Dataset | None = None,
    classes: list[str] | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> DataSplit:
    """Wrap any map-style dataset of ``(image, label)`` for the Python API.

    Labels come from ``train.targets`` when present, else by iterating (which loads every item).
    Without ``val``, a seeded stratified ``val_fraction`` holdout of ``train`` is used. Classes
    default to ``train.classes`` or ``["0", "1", ...]``. Items are passed through as they are.
    """
    train_labels = _labels_of(train)
    val_labels = _labels_of(val) if val is not None else []
    if classes is None:
        classes = [str(c) for c in getattr(train, "classes", [])] or [
            str(i) for i in range(max(train_labels + val_labels, default=-1) + 1)
        ]
    classes = list(classes)
    bad = [y for y in train_labels + val_labels if not 0 <= y < len(classes)]
    if bad:
        raise ImgclsError(f"label {bad[0]} is out of range for {len(classes)} classes")
    if val is not None:
        train_idx, val_idx = list(range(len(train_labels))), list(range(len(val_labels)))
        train_set: Dataset = LabeledSubset(train, train_idx, train_labels, classes)
        val_set: Dataset | None = LabeledSubset(val, val_idx, val_labels, classes)
    else:
        train_idx, val_idx = stratified_split(train_labels, val_fraction, seed)
        train_set = LabeledSubset(train, train_idx, train_labels, classes)
        val_set = LabeledSubset(train, val_idx, train_labels, classes) if val_idx else None
    record = make_record("python", "indices", seed, val_fraction, classes, train_idx, val_idx)
    return DataSplit(train_set, val_set, classes, record)


# --------------------------------------------------------------------------- dispatch


def _find_source(cfg: DataConfig) -> _Source:
    name = cfg.source.strip()
    if name.lower() == digits.NAME:
        return _Source("digits", Path(digits.NAME))
    if name.lower() in CIFAR_CLASSES:
        return _Source("cifar", Path(cfg.root).expanduser().absolute(), name.lower())
    path = Path(name).expanduser()
    if path.suffix.lower() == ".txt":
        if not path.is_file():
            raise ImgclsError(f"list file not found: {name}")
        return _Source("list", path.absolute())
    if path.is_dir():
        found = detect_cifar_folder(path.absolute())
        if found:
            return _Source("cifar", found[1], found[0], found[2])
        return _Source("folder", path.absolute())
    if path.exists():
        raise ImgclsError(
            f"data source {name} is a file, not a folder or a .txt list file; {EXPECTED}"
        )
    raise ImgclsError(f"data source not found: {name}; {EXPECTED}")


def _build(cfg: DataConfig, seed: int, record: dict | None, verify_train: bool) -> DataSplit:
    if record is not None:
        check_record(record)
    src = _find_source(cfg)
    needs = "indices" if src.kind in ("cifar", "digits") else "files"
    if record is not None and record["kind"] != needs:
        raise ImgclsError(
            f"the saved split lists {record['kind']} but data source {cfg.source} needs {needs}; "
            "was it saved for another data source?"
        )
    if src.kind in ("cifar", "digits"):
        return _indexed_split(cfg, src, seed, record)
    if src.kind == "folder":
        classes, pool, default = _folder_pool(src.path, cfg, seed)
        missing: list[str] = []
    else:
        classes, pool, default, missing = _list_pool(src.path, cfg, seed)
    if record is not None:
        check_classes(record, classes, cfg.source)
        train, val = _apply_record(record, pool, set(missing), src.path)
    else:
        train, val = default
    skipped = [str(src.path.parent / key) for key in missing]
    if cfg.skip_bad_images:
        train, bad_train = _verify(train) if verify_train else (train, [])
        val, bad_val = _verify(val) if val is not None else (None, [])
        skipped += bad_train + bad_val
    if record is not None:
        seed, fraction = record.get("seed", seed), record.get("val_fraction", cfg.val_fraction)
    else:
        fraction = cfg.val_fraction
    split_record = make_record(
        cfg.source, "files", seed, fraction, classes, [k for k, _ in train],
        [k for k, _ in val or []],
    )
    root = str(src.path if src.kind == "folder" else src.path.parent)
    return DataSplit(
        train=ImageFileDataset([s for _, s in train], classes, root=root),
        val=ImageFileDataset([s for _, s in val], classes, root=root) if val else None,
        classes=classes,
        split_record=split_record,
        skipped=skipped,
    )


# --------------------------------------------------------------------------- per source


def _indexed_split(cfg: DataConfig, src: _Source, seed: int, record: dict | None) -> DataSplit:
    """A data set of fixed images (CIFAR's training batches, the digits' train part) split by
    index: a seeded stratified holdout, or the saved split's indices."""
    if src.kind == "digits":
        base: Any = digits.Digits("train")
        native, mean_std = digits.NATIVE_SIZE, digits.mean_std(base)
    else:
        base = load_cifar(src.cifar, src.path, True, cfg.download, src.base_folder)
        native, mean_std = NATIVE_SIZE, MEAN_STD[src.cifar]
    classes = list(base.classes)
    if record is None:
        train_idx, val_idx = stratified_split(base.targets, cfg.val_fraction, seed)
        fraction = cfg.val_fraction
    else:
        check_classes(record, classes, cfg.source)
        train_idx, val_idx = record["train"], record["val"]
        out = [i for i in train_idx + val_idx if not 0 <= i < len(base)]
        if out:
            raise ImgclsError(
                f"the saved split lists index {out[0]}, but {cfg.source} has {len(base)} "
                "training images"
            )
        seed, fraction = record.get("seed", seed), record.get("val_fraction", cfg.val_fraction)
    return DataSplit(
        train=LabeledSubset(base, train_idx, base.targets, classes),
        val=LabeledSubset(base, val_idx, base.targets, classes) if val_idx else None,
        classes=classes,
        split_record=make_record(cfg.source, "indices", seed, fraction, classes, train_idx,
                                 val_idx),
        native_size=native,
        mean_std=mean_std,
    )


def _folder_pool(
    path: Path, cfg: DataConfig, seed: int
) -> tuple[list[str], dict[str, Sample], tuple[Pairs, Pairs | None]]:
    """Scan a folder; returns (classes, every file by key, default (train, val) membership)."""
    train_dir = path / "train"
    if train_dir.is_dir():
        train_samples, classes = scan_folder(train_dir)
        val_dir = next((d for d in (path / "val", path / "test") if d.is_dir()), None)
        val_samples = scan_folder(val_dir, classes)[0] if val_dir else []
    else:
        train_samples, classes = scan_folder(path)
        val_dir, val_samples = None, []
    train = [(relative_key(p, path), (p, y)) for p, y in train_samples]
    val = [(relative_key(p, path), (p, y)) for p, y in val_samples]
    pool = dict(train + val)
    if val_dir is None:
        train, val = _holdout(train, cfg.val_fraction, seed)
    return classes, pool, (train, val or None)


def _list_pool(
    path: Path, cfg: DataConfig, seed: int
) -> tuple[list[str], dict[str, Sample], tuple[Pairs, Pairs | None], list[str]]:
    root = Path(cfg.root).expanduser().absolute()
    keys, samples, classes, missing = read_list_file(path, root, cfg.skip_bad_images)
    pairs = list(zip(keys, samples, strict=True))
    train, val = _holdout(pairs, cfg.val_fraction, seed)
    return classes, dict(pairs), (train, val or None), missing


def _holdout(pairs: Pairs, fraction: float, seed: int) -> tuple[Pairs, Pairs]:
    train_idx, val_idx = stratified_split([y for _, (_, y) in pairs], fraction, seed)
    return [pairs[i] for i in train_idx], [pairs[i] for i in val_idx]


def _apply_record(
    record: dict, pool: dict[str, Sample], skipped: set[str], where: Path
) -> tuple[Pairs, Pairs | None]:
    """Exactly the record's membership; files the source no longer has are an error."""
    parts = []
    for part in ("train", "val"):
        keys = [k for k in record[part] if k not in skipped]
        gone = [k for k in keys if k not in pool]
        if gone:
            more = f" (and {len(gone) - 1} more)" if len(gone) > 1 else ""
            raise ImgclsError(
                f"file {gone[0]} of the saved split ({part}) is no longer in {where}{more}"
            )
        parts.append([(k, pool[k]) for k in keys])
    return parts[0], parts[1] or None


def _verify(pairs: Pairs) -> tuple[Pairs, list[str]]:
    _, bad = verify_samples([s for _, s in pairs])
    bad_set = set(bad)
    return [(k, s) for k, s in pairs if s[0] not in bad_set], bad


def _labels_of(dataset: Dataset) -> list[int]:
    targets = getattr(dataset, "targets", None)
    if targets is None:
        targets = [dataset[i][1] for i in range(len(dataset))]  # type: ignore[arg-type]
    return [int(t) for t in targets]
