"""scikit-learn's bundled handwritten digits: a data set that ships with the install.

1,797 real 8x8 greyscale scans of the digits 0-9 (about 180 per class), from the UCI "optical
recognition of handwritten digits" set, bundled inside scikit-learn: ``--data digits`` trains
anywhere, with no download. A fixed stratified fifth (seed 0, whatever ``train.seed`` is) is the
test split, so ``imgcls evaluate --split test`` always means the same 359 images; the
validation set is a seeded ``data.val_fraction`` of the rest, as for every source.

Images are served as PIL RGB images (the grey value in all three channels, 0..16 scaled to
0..255) at their native 8x8; the transforms resize them to the model's input size, and a
1-channel model (``model.in_channels=1``) gets them back as greyscale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from imgcls.data.splits import stratified_split
from imgcls.errors import ImgclsError

NAME = "digits"
NATIVE_SIZE = 8
CLASSES = [str(d) for d in range(10)]
TEST_FRACTION = 0.2
TEST_SEED = 0  # the test split never moves


def _load() -> tuple[np.ndarray, list[int]]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # a dependency of imgcls; only a broken install lacks it
        raise ImgclsError("--data digits needs scikit-learn: pip install scikit-learn") from None
    bunch = load_digits()
    pixels = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    return pixels, [int(t) for t in bunch.target]


class Digits(Dataset):
    """The ``train`` (1,438 images) or ``test`` (359) part; yields ``(PIL RGB image, label)``.

    >>> image, label = Digits("test")[0]  # doctest: +SKIP
    >>> image.size, image.mode             # doctest: +SKIP
    ((8, 8), 'RGB')
    """

    classes = CLASSES

    def __init__(self, part: str = "train") -> None:
        if part not in ("train", "test"):
            raise ValueError(f"part must be train or test, got {part!r}")
        pixels, labels = _load()
        train_idx, test_idx = stratified_split(labels, TEST_FRACTION, TEST_SEED)
        keep = train_idx if part == "train" else test_idx
        self.part = part
        self.data = pixels[keep]  # N x 8 x 8 uint8, as torchvision's CIFAR keeps its pixels
        self.targets = [labels[i] for i in keep]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.data[index], "L").convert("RGB"), self.targets[index]


def mean_std(dataset: Digits) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the pixels in [0, 1] (the same for the three channels)."""
    values = dataset.data.astype(np.float64) / 255.0
    return [float(values.mean())] * 3, [float(values.std())] * 3


def export_images(part: str, out_dir: Path) -> int:
    """Write the ``part`` images as 8x8 greyscale PNGs in class folders (``out_dir/7/0042.png``):
    real files to try ``imgcls predict`` on, or a folder-of-images data set to train from."""
    data = Digits(part)
    for index, (pixels, label) in enumerate(zip(data.data, data.targets, strict=True)):
        folder = out_dir / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, "L").save(folder / f"{part}_{index:04d}.png")
    return len(data)
