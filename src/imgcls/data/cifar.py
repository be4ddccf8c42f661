"""CIFAR-10/100 through torchvision, from a download or an already-extracted local copy."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

from torchvision import datasets
from torchvision.datasets.utils import download_and_extract_archive

from imgcls.errors import ImgclsError, first_line

NATIVE_SIZE = 32
MEAN_STD = {
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
    "cifar100": ([0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]),
}
TITLES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


class _FilesExist:
    """Replace torchvision's MD5 checks with "the files exist".

    torchvision hashes every batch against the official MD5s, which rejects CIFAR-format files
    written by tests or conversion tools (and re-hashes 170 MB on every load). A damaged pickle
    still fails when it is read, and that becomes an ImgclsError naming the folder.
    """

    root: str
    base_folder: str
    train_list: list[list[str]]
    test_list: list[list[str]]
    meta: dict[str, str]

    def __init__(self, root: str, train: bool = True, base_folder: str | None = None) -> None:
        if base_folder is not None:
            self.base_folder = base_folder  # a copy extracted under another folder name
        super().__init__(root, train=train, download=False)  # type: ignore[call-arg]

    def _check_integrity(self) -> bool:
        return files_present(type(self), Path(self.root) / self.base_folder)

    def _load_meta(self) -> None:  # torchvision's version, without the MD5 check
        path = os.path.join(self.root, self.base_folder, self.meta["filename"])
        with open(path, "rb") as f:
            data = pickle.load(f, encoding="latin1")
        self.classes = list(data[self.meta["key"]])
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


class CIFAR10(_FilesExist, datasets.CIFAR10):
    """torchvision's CIFAR10 (PIL RGB images, ``targets``, ``classes``) without MD5 checks."""


class CIFAR100(_FilesExist, datasets.CIFAR100):
    """torchvision's CIFAR100 (fine labels) without MD5 checks."""


CLASSES = {"cifar10": CIFAR10, "cifar100": CIFAR100}


def files_present(cls: type[datasets.CIFAR10], folder: Path) -> bool:
    """Whether every batch file and the meta file of ``cls`` exist in ``folder``."""
    names = [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    return all((folder / name).is_file() for name in names)


def detect_cifar_folder(path: Path) -> tuple[str, Path, str] | None:
    """Recognise an extracted CIFAR copy: the batches folder itself or the folder holding it.

    Returns (name, root, base_folder) or None.
    """
    for name, cls in CLASSES.items():
        first = cls.train_list[0][0]
        if (path / first).is_file() and (path / cls.meta["filename"]).is_file():
            return name, path.parent, path.name
        if (path / cls.base_folder / first).is_file():
            return name, path, cls.base_folder
    return None


def _local_copy_hint(name: str) -> str:
    cls = CLASSES[name]
    return (
        f"to use a local copy, download {cls.url}, extract it and pass "
        f"--data /path/to/{cls.base_folder} (or data.root=/folder/containing/{cls.base_folder}); "
        "to try imgcls without a download, --data digits trains on the digits bundled with "
        "scikit-learn"
    )


def load_cifar(
    name: str, root: Path, train: bool, download: bool = False, base_folder: str | None = None
) -> datasets.CIFAR10:
    """The CIFAR training (50k) or test (10k) set in ``root/base_folder``, downloaded if allowed.

    A missing copy or a failed (e.g. offline) download is one ImgclsError line that says how to
    point imgcls at a local copy.
    """
    cls = CLASSES[name]
    base_folder = base_folder or cls.base_folder
    folder = root / base_folder
    title = TITLES[name]
    if not files_present(cls, folder):
        if not download:
            raise ImgclsError(
                f"{title} not found in {folder} and data.download is false; "
                f"{_local_copy_hint(name)}"
            )
        try:
            root.mkdir(parents=True, exist_ok=True)
            download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)
        except Exception as exc:  # offline, proxy, TLS, bad archive: many exception types
            reason = first_line(exc)
            raise ImgclsError(
                f"cannot download {title} into {root} ({reason}); {_local_copy_hint(name)}"
            ) from None
    try:
        return cls(str(root), train=train, base_folder=base_folder)
    except (OSError, EOFError, KeyError, ValueError, RuntimeError, pickle.UnpicklingError) as exc:
        raise ImgclsError(f"cannot read the {title} files in {folder}: {exc!r}") from None
