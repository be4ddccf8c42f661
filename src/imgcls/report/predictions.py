"""Per-image predictions of a run's checkpoint on one split: the probabilities, the true labels,
and the dataset itself so that the few images a page shows can be decoded afterwards (never all
of them: CIFAR-10's 5,000 validation images are scored in batches, 12 or so are drawn)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from imgcls.deploy.load import LoadedModel, evaluation_overrides, load_model
from imgcls.deploy.scoring import score
from imgcls.errors import ImgclsError
from imgcls.models.user import CodeConsent


@dataclass
class Predictions:
    probs: np.ndarray  # N x K softmax probabilities (float64); multi-label: each class's sigmoid
    labels: np.ndarray  # N true class indices; multi-label: N x K 0/1 rows (uint8)
    classes: list[str]
    dataset: Dataset  # the raw split, (image, label) per index, untransformed
    split: str
    source: str  # the data source scored (the run's own unless --data)
    # multi-label: each class's decision threshold (the checkpoint's); None: one label per image
    thresholds: np.ndarray | None = None

    @property
    def multilabel(self) -> bool:
        return self.thresholds is not None

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    @property
    def confidence(self) -> np.ndarray:
        return self.probs.max(axis=1)

    @property
    def loss(self) -> np.ndarray:
        """Each image's cross-entropy, -log p(true class)."""
        p_true = self.probs[np.arange(len(self.labels)), self.labels]
        return -np.log(np.clip(p_true, 1e-12, None))

    def confusion(self) -> torch.Tensor:
        k = len(self.classes)
        flat = self.labels.astype(np.int64) * k + self.predicted
        return torch.from_numpy(np.bincount(flat, minlength=k * k).reshape(k, k))

    def thumbnail(self, index: int, size: int = 64) -> Image.Image:
        """Image ``index`` as an RGB square thumbnail: small images are enlarged with nearest
        neighbours (digits are 8x8 px), large ones shrunk."""
        image = self.dataset[index][0]
        if isinstance(image, torch.Tensor):  # a dataset yielding C x H x W tensors
            array = image.detach().float()
            if array.max() > 1.0:
                array = array / 255.0
            image = Image.fromarray(
                (array.clamp(0, 1) * 255).byte().permute(1, 2, 0).squeeze(-1).numpy())
        image = image.convert("RGB")
        small = max(image.size) <= size
        image.thumbnail((size, size), Image.Resampling.NEAREST if small else
                        Image.Resampling.BILINEAR)
        if small:
            scale = size // max(image.size)
            image = image.resize((image.width * scale, image.height * scale),
                                 Image.Resampling.NEAREST)
        return image


def find_checkpoint(run_dir: Path) -> Path:
    """``best.pt``, else ``last.pt``, of a run folder."""
    if not run_dir.is_dir():
        raise ImgclsError(f"run folder {run_dir} does not exist")
    for name in ("best.pt", "last.pt"):
        path = run_dir / "checkpoints" / name
        if path.is_file():
            return path
    raise ImgclsError(f"no checkpoint in {run_dir / 'checkpoints'} (expected best.pt or last.pt)")


def collect_predictions(loaded: LoadedModel, run_dir: Path, *, split: str = "val",
                        data: str | None = None) -> Predictions:
    """Score every image of ``split`` as ``imgcls evaluate`` does
    (:func:`imgcls.deploy.scoring.score`: the run's evaluation preprocessing and test-time
    augmentation, in batches, without gradients); row i is the split's image i. A multi-label
    model's probabilities are each class's sigmoid, taken in fp32 as its validation took them
    (so the checkpoint's thresholds, chosen on those, cut the same scores)."""
    scores = score(loaded, split=split, run_dir=run_dir, data=data, require_images=True)
    labels = scores.labels()
    assert labels is not None and scores.dataset is not None
    if loaded.record.multilabel:
        probs = torch.sigmoid(scores.logits().float()).double().numpy()
        return Predictions(probs, labels.numpy().astype(np.uint8), scores.classes,
                           scores.dataset, split, scores.source,
                           np.array(loaded.record.decision_thresholds(), dtype=np.float64))
    return Predictions(scores.probabilities().numpy(), labels.numpy().astype(np.int64),
                       scores.classes, scores.dataset, split, scores.source)


def load_for_report(run_dir: Path, *, data: str | None, device: str,
                    code: CodeConsent | None = None) -> LoadedModel:
    return load_model(find_checkpoint(run_dir), device=device,
                      overrides=evaluation_overrides(data=data), code=code)
