"""``imgcls serve MODEL.onnx``: an exported model served by ONNX Runtime, with the classes,
input size, normalisation and evaluation transform of its JSON sidecar (``imgcls export``
writes them), so that nothing of PyTorch's model code or checkpoint is needed. It stands in for
:class:`imgcls.deploy.load.LoadedModel` where serving uses one; Grad-CAM needs gradients, which
an ONNX file has not (``/explain``: 501)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from imgcls.config import build_config
from imgcls.config.sizes import image_size
from imgcls.data.transforms import build_transform
from imgcls.errors import ImgclsError


class OnnxModule(nn.Module):
    """An ONNX Runtime session as a module: float NCHW in, logits out (a multi-label model's
    exported probabilities turned back into logits, so that serving's sigmoid gives them)."""

    def __init__(self, path: Path, sidecar: dict[str, Any]) -> None:
        super().__init__()
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(path),
                                                    providers=["CPUExecutionProvider"])
        self.input_name = sidecar["input_name"]
        self.probabilities = bool(sidecar.get("multilabel"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (out,) = self.session.run(None, {self.input_name: x.detach().cpu().numpy().astype(
            np.float32)})
        scores = torch.from_numpy(out)
        return torch.logit(scores.double(), eps=1e-12).float() if self.probabilities else scores


@dataclass
class OnnxRecord:
    multilabel: bool
    thresholds: list[float] | None
    epoch: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    def decision_thresholds(self, override: float | None = None) -> list[float]:
        assert self.thresholds is not None
        return [override] * len(self.thresholds) if override is not None else self.thresholds


@dataclass
class OnnxLoaded:
    """What serving reads of a loaded model, from an ONNX file and its sidecar."""

    model: nn.Module
    classes: list[str]
    input_size: Any
    mean_std: tuple[list[float], list[float]] | None
    record: OnnxRecord
    path: Path
    transform_keys: dict[str, Any]
    in_channels: int
    device: torch.device = torch.device("cpu")
    config: Any = None
    onnx: bool = True

    def eval_transform(self, *, native_size: int | None = None) -> Any:
        overrides = {f"transforms.{k}": v for k, v in self.transform_keys.items()}
        cfg = build_config(overrides=overrides)  # every key explicit: no preset re-applied
        return build_transform(cfg.transforms, train=False, image_size=self.input_size,
                               native_size=native_size, mean_std=self.mean_std,
                               in_channels=self.in_channels, explicit=cfg.explicit)


def load_onnx(path: str | Path) -> OnnxLoaded:
    """An exported model and its sidecar (``MODEL.onnx.json``); one line naming what is
    missing otherwise."""
    path = Path(path)
    sidecar_path = path.with_name(path.name + ".json")
    if not path.is_file():
        raise ImgclsError(f"ONNX file not found: {path}")
    try:
        sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ImgclsError(f"cannot read {sidecar_path}, the sidecar imgcls export writes "
                          f"beside {path.name}: {exc}") from None
    if sidecar.get("include_preprocess") or "eval_transform" not in sidecar:
        raise ImgclsError(f"{path}: serve takes a model exported without --include-preprocess "
                          "by this imgcls (its sidecar records the evaluation transform)")
    mean, std = sidecar.get("mean"), sidecar.get("std")
    multilabel = bool(sidecar.get("multilabel"))
    return OnnxLoaded(
        model=OnnxModule(path, sidecar), classes=list(sidecar["classes"]),
        input_size=image_size(sidecar["input_size"]),
        mean_std=None if mean is None else (mean, std),
        record=OnnxRecord(multilabel, sidecar.get("thresholds") if multilabel else None),
        path=path, transform_keys=sidecar["eval_transform"],
        in_channels=int(sidecar.get("in_channels", 3)),
        config=SimpleNamespace(model=SimpleNamespace(name=f"onnx:{path.name}")))
