"""Pick the data source named by ``data.source`` and build train/validation/test datasets.

Sources: ``digits`` (scikit-learn's bundled 8x8 digits: no download), ``cifar10`` / ``cifar100``
(torchvision, or a path to an extracted copy), a folder of class folders (optionally with
``train/`` and ``val/`` or ``test/``), a ``.txt`` list file, or a ``.csv`` of images with any
number of labels each (multi-label: :mod:`imgcls.data.label_csv`).
Datasets yield ``(PIL.Image in RGB mode, label)`` with no transforms, and expose ``targets``; the
label is an int class index, or for a label CSV a uint8 ``[K]`` multi-hot row
(:mod:`imgcls.data.targets`).
Which files of a folder or list file go to which part: :mod:`imgcls.data.file_pools`.
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
from imgcls.data.file_pools import (
    Pairs,
    apply_record,
    csv_pool,
    folder_pool,
    list_pool,
    verify_pairs,
)
from imgcls.data.folder import (
    ImageFileDataset,
    MultiLabelFileDataset,
    find_class_folders,
    scan_folder,
    verify_samples,
)
from imgcls.data.splits import (
    LabeledSubset,
    check_classes,
    check_record,
    kfold_split,
    make_record,
    stratified_split,
)
from imgcls.data.targets import is_multilabel, stack_labels
from imgcls.errors import ImgclsError

EXPECTED = ("expected digits, cifar10, cifar100, a folder of class folders, a .txt list file or "
            "a .csv label file")


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
    # symlinks not followed (a loop, a parent folder, a second path to an image), as keys
    links_dropped: list[str] = field(default_factory=list)
    # the test part carved from the same pool (data.test_fraction); None: the source's own test
    # split, if any, is read by create_eval_dataset
    test: Dataset | None = None
    multilabel: bool = False  # labels are multi-hot rows (a label CSV), not class indices


class _Source(NamedTuple):
    kind: str  # digits | cifar | folder | list | csv
    path: Path  # CIFAR root, data folder, list file or label CSV
    cifar: str = ""  # cifar10 | cifar100
    base_folder: str | None = None  # the CIFAR batches folder's name under `path`


# --------------------------------------------------------------------------- public API


def create_datasets(cfg: DataConfig, seed: int, split_record: dict | None = None) -> DataSplit:
    """Training and validation sets for ``cfg.source``.

    Validation is the dataset's ``val/`` (else ``test/``) folder when there is one, else a seeded
    stratified ``cfg.val_fraction`` holdout. Given ``split_record`` (a saved split.json), its
    train/val membership is reused exactly; a listed file that is gone, or classes that differ,
    is an ImgclsError. ``cfg.split_seed``, when set, seeds the split instead of ``seed``.
    """
    seed = split_seed(cfg, seed)
    return _with_val_split(cfg, seed, _build(cfg, seed, split_record, verify_train=True))


def split_seed(cfg: DataConfig, seed: int) -> int:
    """The seed of the split: ``data.split_seed``, else the run's ``train.seed``."""
    return seed if cfg.split_seed is None else cfg.split_seed


def _with_val_split(cfg: DataConfig, seed: int, data: DataSplit) -> DataSplit:
    """``data.val_split=test``: the test split (carved or the source's own) validates."""
    if cfg.val_split == "test":
        data.val = data.test if data.test is not None else _own_test(cfg, None)[0]
    return data


def create_eval_dataset(
    cfg: DataConfig, split: str, seed: int, split_record: dict | None = None,
    classes: list[str] | None = None,
) -> tuple[Dataset, list[str]]:
    """The ``val`` set training used (from ``split_record`` or recomputed from ``seed``) or the
    ``test`` set (``PATH/test`` for folders, the official test batch for CIFAR, the fixed fifth
    of the digits); returns
    (dataset, classes). List files have no test split. A label CSV is read with ``classes``
    (the model's) when given: it may lack some, and a label outside them names its line."""
    seed = split_seed(cfg, seed)
    if split == "val":
        data = _with_val_split(cfg, seed, _build(cfg, seed, split_record, verify_train=False,
                                                 classes=classes))
        if data.val is None:
            raise ImgclsError(
                f"data source {cfg.source} has no validation set "
                "(data.val_fraction is 0 and there is no val folder)"
            )
        return data.val, data.classes
    if split != "test":
        raise ImgclsError(f"unknown evaluation split {split!r}; expected val or test")
    if cfg.test_fraction > 0 or (split_record is not None and "test" in split_record):
        data = _build(cfg, seed, split_record, verify_train=False, classes=classes)
        assert data.test is not None
        return data.test, data.classes
    return _own_test(cfg, split_record)


def _own_test(cfg: DataConfig, split_record: dict | None) -> tuple[Dataset, list[str]]:
    """The source's own test split: CIFAR's test batch, the digits' fixed fifth, a folder's
    ``test/``; list files have none."""
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
                f"no test split in {src.path}: expected {test_dir} next to {train_dir}, or "
                "data.test_fraction to hold one out"
            )
        classes = find_class_folders(train_dir)
        samples, _ = scan_folder(test_dir, classes)
        skipped: list[str] = []
        if cfg.skip_bad_images:
            samples, skipped = verify_samples(samples, cfg.max_image_pixels)
        test = ImageFileDataset(samples, classes, root=str(test_dir),
                                max_pixels=cfg.max_image_pixels)
        test.skipped = skipped
    else:
        what = "list file" if src.kind == "list" else "label file"
        raise ImgclsError(
            f"{what} {src.path} has no test split; hold one out with data.test_fraction, or "
            "evaluate split val"
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
    train_labels = dataset_labels(train)
    val_labels = dataset_labels(val) if val is not None else []
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
    # A separate val dataset is numbered after the training one in the record, as if the two
    # were concatenated: the record's parts never share an index.
    offset = len(train_labels) if val is not None else 0
    record = make_record("python", "indices", seed, val_fraction, classes, train_idx,
                         [offset + i for i in val_idx])
    return DataSplit(train_set, val_set, classes, record)


# --------------------------------------------------------------------------- dispatch


def _find_source(cfg: DataConfig) -> _Source:
    name = cfg.source.strip()
    if name.lower() == digits.NAME:
        return _Source("digits", Path(digits.NAME))
    if name.lower() in CIFAR_CLASSES:
        return _Source("cifar", Path(cfg.root).expanduser().absolute(), name.lower())
    path = Path(name).expanduser()
    if path.suffix.lower() in (".txt", ".csv"):
        kind = "list" if path.suffix.lower() == ".txt" else "csv"
        if not path.is_file():
            raise ImgclsError(f"{'list' if kind == 'list' else 'label'} file not found: {name}")
        return _Source(kind, path.absolute())
    if path.is_dir():
        found = detect_cifar_folder(path.absolute())
        if found:
            return _Source("cifar", found[1], found[0], found[2])
        return _Source("folder", path.absolute())
    if path.exists():
        raise ImgclsError(
            f"data source {name} is a file, not a folder, a .txt list file or a .csv label "
            f"file; {EXPECTED}"
        )
    raise ImgclsError(f"data source not found: {name}; {EXPECTED}")


def _build(cfg: DataConfig, seed: int, record: dict | None, verify_train: bool,
           classes: list[str] | None = None) -> DataSplit:
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
    links: list[str] = []
    if src.kind == "folder":
        classes, pool, default = folder_pool(src.path, cfg, seed, links)
        missing: list[str] = []
    elif src.kind == "csv":
        classes, pool, default, missing = csv_pool(src.path, cfg, seed, classes,
                                                   training=verify_train)
    else:
        classes, pool, default, missing = list_pool(src.path, cfg, seed)
    if record is not None:
        check_classes(record, classes, cfg.source)
        parts = apply_record(record, pool, set(missing), src.path)
    else:
        parts = default
    skipped = [str(src.path.parent / key) for key in missing]
    train, val, test = parts
    if cfg.skip_bad_images:
        limit = cfg.max_image_pixels
        train, bad_train = verify_pairs(train, limit) if verify_train else (train, [])
        val, bad_val = verify_pairs(val, limit) if val is not None else (None, [])
        skipped += bad_train + bad_val
    if record is not None:
        seed, fraction = record.get("seed", seed), record.get("val_fraction", cfg.val_fraction)
    else:
        fraction = _val_fraction(cfg)
    split_record = make_record(
        cfg.source, "files", seed, fraction, classes, [k for k, _ in train],
        [k for k, _ in val or []],
    )
    _note_parts(split_record, cfg, test)
    root = str(src.path if src.kind == "folder" else src.path.parent)

    kind = MultiLabelFileDataset if src.kind == "csv" else ImageFileDataset

    def files(pairs: Pairs | None) -> ImageFileDataset | None:
        return kind([s for _, s in pairs], classes, root=root,
                    max_pixels=cfg.max_image_pixels) if pairs else None

    return DataSplit(train=files(train), val=files(val), classes=classes,  # type: ignore[arg-type]
                     split_record=split_record, skipped=skipped, test=files(test),
                     links_dropped=links, multilabel=src.kind == "csv")


def _note_parts(record: dict[str, Any], cfg: DataConfig, test: Pairs | None) -> None:
    """What split.json says beyond train and val: the carved test part, the val_split mode."""
    if test is not None:
        record["test_fraction"] = cfg.test_fraction
        record["test"] = [k for k, _ in test]
    if cfg.val_split != "holdout":
        record["val_split"] = cfg.val_split
    if cfg.folds:
        record["folds"], record["fold"] = cfg.folds, cfg.fold


def _val_fraction(cfg: DataConfig) -> float:
    """The fraction of the training part validated on, as split.json records it."""
    if cfg.folds:
        return 1.0 / cfg.folds
    return cfg.val_fraction if cfg.val_split == "holdout" else 0.0


# --------------------------------------------------------------------------- per source


def _indexed_split(cfg: DataConfig, src: _Source, seed: int, record: dict | None) -> DataSplit:
    """A data set of fixed images (CIFAR's training batches, the digits' train part) split by
    index: a seeded stratified holdout, or the saved split's indices."""
    if cfg.test_fraction > 0:
        raise ImgclsError(f"data.test_fraction={cfg.test_fraction:g}: {cfg.source} has its own "
                          "test split (`imgcls evaluate --split test`); use data.test_fraction "
                          "with a single folder or a list file")
    if src.kind == "digits":
        base: Any = digits.Digits("train")
        native, mean_std = digits.NATIVE_SIZE, digits.mean_std(base)
    else:
        base = load_cifar(src.cifar, src.path, True, cfg.download, src.base_folder)
        native, mean_std = NATIVE_SIZE, MEAN_STD[src.cifar]
    classes = list(base.classes)
    fraction = _val_fraction(cfg)
    if record is None and cfg.folds:
        train_idx, val_idx = kfold_split(base.targets, cfg.folds, cfg.fold, seed, classes)
    elif record is None:
        train_idx, val_idx = stratified_split(base.targets, fraction, seed)
    else:
        check_classes(record, classes, cfg.source)
        train_idx, val_idx = record["train"], record["val"]
        out = [i for i in train_idx + val_idx if not 0 <= i < len(base)]
        if out:
            raise ImgclsError(
                f"the saved split lists index {out[0]}, but {cfg.source} has {len(base)} "
                "training images"
            )
        seed, fraction = record.get("seed", seed), record.get("val_fraction", fraction)
    split_record = make_record(cfg.source, "indices", seed, fraction, classes, train_idx,
                               val_idx)
    _note_parts(split_record, cfg, None)
    return DataSplit(
        train=LabeledSubset(base, train_idx, base.targets, classes),
        val=LabeledSubset(base, val_idx, base.targets, classes) if val_idx else None,
        classes=classes,
        split_record=split_record,
        native_size=native,
        mean_std=mean_std,
    )


def dataset_labels(dataset: Dataset) -> Any:
    """Every item's label: ``targets`` (imgcls's datasets, torchvision's), else the labels of
    ``samples`` (``(path, label)`` pairs), else by loading every item (slow: decodes images).
    Class indices as a list of ints; multi-hot rows (a label CSV) as a uint8 ``[N, K]`` array.

    >>> dataset_labels(LabeledSubset([("a", 0), ("b", 1)], [1], [0, 1], ["x", "y"]))
    [1]
    """
    targets = getattr(dataset, "targets", None)
    if targets is None and getattr(dataset, "samples", None) is not None:
        targets = [label for _, label in dataset.samples]  # type: ignore[attr-defined]
    if targets is None:
        targets = [dataset[i][1] for i in range(len(dataset))]  # type: ignore[arg-type]
    labels = stack_labels(targets)
    return labels.numpy() if is_multilabel(labels) else labels.tolist()
