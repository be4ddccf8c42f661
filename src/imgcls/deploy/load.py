"""A trained model ready to use: weights, classes and the evaluation preprocessing, rebuilt from a
checkpoint. evaluate, predict and export all start here, so they preprocess images exactly as the
validation pass of training did (and evaluate, report and predict score through
:func:`imgcls.deploy.scoring.score`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.transforms import v2

from imgcls import runtime
from imgcls.config import Config, build_config, from_saved
from imgcls.config.sizes import ImageSize, image_size
from imgcls.data.transforms import build_transform
from imgcls.deploy.legacy import read_any_checkpoint
from imgcls.errors import ImgclsError
from imgcls.models import create_model
from imgcls.models.user import CodeConsent, approve_code, is_user_model
from imgcls.runs.checkpoint import load_model_state
from imgcls.runs.record import CheckpointRecord
from imgcls.tracking import echo


@dataclass
class LoadedModel:
    model: nn.Module  # in eval mode, on ``device``
    classes: list[str]
    input_size: ImageSize  # an int when square, else (height, width)
    mean_std: tuple[list[float], list[float]] | None
    config: Config
    record: CheckpointRecord  # what the checkpoint holds (epoch, metrics, provenance, ...)
    device: torch.device
    path: Path

    @property
    def native_size(self) -> int | None:
        return self.record.native_size

    def eval_transform(self, *, native_size: int | None = None) -> v2.Compose:
        """The evaluation transform of training: resize policy, input size, normalisation."""
        return build_transform(
            self.config.transforms, train=False, image_size=self.input_size,
            native_size=native_size, mean_std=self.mean_std,
            in_channels=self.config.model.in_channels, explicit=self.config.explicit,
        )


def evaluation_overrides(*, data: str | None = None, batch_size: int | None = None,
                         tta: str | None = None) -> dict[str, Any]:
    """The config keys an evaluation command changes on a checkpoint's run (None: the run's
    own): the data source, the evaluation batch size, the test-time augmentation."""
    given = {"data.source": data, "loader.eval_batch_size": batch_size, "train.tta": tta}
    return {key: value for key, value in given.items() if value is not None}


def read_checkpoint(path: str | Path, *, trust_pickle: bool = False) -> CheckpointRecord:
    """An imgcls checkpoint; with ``trust_pickle``, an old ``torch.save(model)`` file is
    unpickled (running its code, with a warning) and converted in memory."""
    if trust_pickle:
        record = read_any_checkpoint(path, trust_pickle=True)
        record.check(path)  # a converted pickle is checked as a loaded record is
        return record
    return CheckpointRecord.load(path)  # checked against itself (CheckpointRecord.check)


def load_model(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    trust_pickle: bool = False,
    overrides: dict[str, Any] | None = None,
    code: CodeConsent | None = None,
) -> LoadedModel:
    """Rebuild the model of a checkpoint with its weights, in eval mode. A model of the user's
    own class is imported only as ``code`` allows (:func:`imgcls.models.user.approve_code`).

    >>> loaded = load_model("runs/NAME/checkpoints/best.pt")  # doctest: +SKIP
    >>> loaded.classes, loaded.input_size                      # doctest: +SKIP
    """
    path = Path(path)
    record = read_checkpoint(path, trust_pickle=trust_pickle)
    cfg = build_config(from_saved(record.config), overrides)
    name = approve_code(cfg.model.name, record.model_code, code, path)  # before any import
    cfg = replace(cfg, model=replace(cfg.model, name=name))
    if is_user_model(cfg.model.name):  # the user's own code, named by the checkpoint: say so
        echo(f"rebuilding the model from {cfg.model.name} (your own model code)")
    torch_device = device if isinstance(device, torch.device) else runtime.resolve_device(device)
    # The weights come from the checkpoint: never download or read pretrained ones again.
    model = create_model(
        replace(cfg.model, pretrained=""), len(record.classes), from_checkpoint=True
    )
    weights = record.inference_weights()
    bad = next((k for k, v in weights.items() if v.is_floating_point() and
                not bool(torch.isfinite(v).all())), None)
    if bad is not None:  # a diverged run's weights predict nan: refuse them up front
        raise ImgclsError(f"{path} holds non-finite weights (nan or inf in {bad}): it comes "
                          "from a run that diverged; use an earlier checkpoint")
    load_model_state(model, weights, path)
    model.to(torch_device).eval()
    # one image of the recorded size: a size or head that does not fit is one line, here
    record.check_model(model, path, torch_device)
    return LoadedModel(
        model=model, classes=list(record.classes), input_size=image_size(record.input_size),
        mean_std=record.mean_std, config=cfg, record=record, device=torch_device, path=path,
    )
