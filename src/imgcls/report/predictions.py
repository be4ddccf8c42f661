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

from imgcls.data import create_eval_dataset
from imgcls.data.pipeline import Preprocessing, build_eval_loader
from imgcls.data.splits import load_split
from imgcls.engine.components import create_speed
from imgcls.engine.loop import tta_logits
from imgcls.errors import ImgclsError
from imgcls.inference import LoadedModel, evaluation_overrides, load_model
from imgcls.models.user import CodeConsent


@dataclass
class Predictions:
    probs: np.ndarray  # N x K softmax probabilities (float64)
    labels: np.ndarray  # N true class indices
    classes: list[str]
    dataset: Dataset  # the raw split, (image, label) per index, untransformed
    split: str
    source: str  # the data source scored (the run's own unless --data)

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
    """Score every image of ``split`` with the run's evaluation preprocessing and test-time
    augmentation (as ``imgcls evaluate`` does), in batches, without gradients."""
    if split not in ("val", "test"):
        raise ImgclsError(f"--split must be val or test, got {split!r}")
    cfg = loaded.config
    split_record = None
    if (run_dir / "split.json").exists():
        record = load_split(run_dir / "split.json")
        if data is None or record.get("source") == cfg.data.source:
            split_record = record
    dataset, classes = create_eval_dataset(cfg.data, split, cfg.train.seed, split_record)
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ImgclsError(f"the {split} split of {cfg.data.source} has no images")
    if list(classes) != loaded.classes:
        raise ImgclsError(f"the classes of {cfg.data.source} ({split}) {list(classes)[:6]} "
                          f"differ from checkpoint {loaded.path}'s {loaded.classes[:6]}")
    # The loader `imgcls evaluate` uses: images decoded once into memory (and cached) when they
    # fit, else a DataLoader; both keep the split's order, so row i is dataset[i].
    loader = build_eval_loader(cfg, dataset, Preprocessing(loaded.input_size, loaded.mean_std),
                               loaded.native_size, loaded.device)
    speed = create_speed(cfg, loaded.device)  # evaluate's switches: channels-last, autocast
    if speed.channels_last:
        loaded.model.to(memory_format=torch.channels_last)
    probs, labels = [], []
    with torch.inference_mode(), speed.autocast(loaded.device):
        for images, targets in loader:
            logits = tta_logits(loaded.model, speed.inputs(images, loaded.device), cfg.train.tta)
            probs.append(torch.softmax(logits.double(), dim=1).cpu())
            labels.append(targets)
    return Predictions(torch.cat(probs).numpy(), torch.cat(labels).numpy().astype(np.int64),
                       list(classes), dataset, split, cfg.data.source)


def load_for_report(run_dir: Path, *, data: str | None, device: str,
                    code: CodeConsent | None = None) -> LoadedModel:
    return load_model(find_checkpoint(run_dir), device=device,
                      overrides=evaluation_overrides(data=data), code=code)
