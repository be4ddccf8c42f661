"""``imgcls explain``: for each image, a heatmap of what the explained class rests on, overlaid
on the image as the model saw it (PNG), and a JSON with the top-k and where the map peaks.

The image is read and preprocessed as ``imgcls predict`` reads it, so the top-k equal predict's.
The explained class is the predicted one, the one ``class_name`` names, or, for a multi-label
model, each label at or above its threshold (the top-scoring class when none is).

>>> report = explain("runs/NAME/checkpoints/best.pt", ["photo.jpg"])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from imgcls.deploy.load import LoadedModel, load_model
from imgcls.deploy.predict import collect_inputs
from imgcls.deploy.scoring import prepare_image
from imgcls.errors import ImgclsError
from imgcls.explain.attribution import METHODS, heatmaps, peak_of
from imgcls.explain.overlay import model_view, overlay
from imgcls.explain.target_layer import TargetLayer, choose_target_layer
from imgcls.files import atomic_write, printable
from imgcls.models.user import CodeConsent


@dataclass
class Explained:
    """One image: its top-k, and per explained class the heatmap's file and peak."""

    path: str
    top: list[tuple[str, float]] = field(default_factory=list)
    explained: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


@dataclass
class ExplainReport:
    output: Path
    method: str
    layer: str | None  # the target layer (gradcam), None for integrated gradients
    results: list[Explained]

    @property
    def failed(self) -> int:
        return sum(r.error is not None for r in self.results)


def target_layer_for(loaded: LoadedModel, name: str = "") -> TargetLayer:
    """The Grad-CAM layer of a loaded model: ``name``, else ``model.cam_layer``, else chosen
    at the checkpoint's input size (:func:`choose_target_layer`)."""
    size = loaded.input_size if isinstance(loaded.input_size, int) else min(loaded.input_size)
    return choose_target_layer(loaded.model, size, loaded.config.model.in_channels,
                               name or loaded.config.model.cam_layer)


def explain(
    checkpoint: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    *,
    output: str | os.PathLike[str] = "explanations",
    method: str = "gradcam",
    class_name: str | None = None,
    layer: str = "",
    top_k: int = 5,
    batch_size: int = 16,
    device: str = "auto",
    trust_pickle: bool = False,
    code: CodeConsent | None = None,
) -> ExplainReport:
    """Explain every image of ``inputs`` (files, folders, list files); write the PNGs, one JSON
    per image and ``explanations.json`` (all of them) under ``output``."""
    if method not in METHODS:
        raise ImgclsError(f"--method {method}: one of {', '.join(METHODS)}")
    if top_k < 1 or batch_size < 1:
        raise ImgclsError("--top-k and --batch-size must be at least 1")
    paths = collect_inputs(inputs)
    loaded = load_model(checkpoint, device=device, trust_pickle=trust_pickle, code=code)
    if class_name is not None and class_name not in loaded.classes:
        raise ImgclsError(f"--class {class_name}: not a class of {checkpoint} "
                          f"({', '.join(loaded.classes)})")
    target = target_layer_for(loaded, layer) if method == "gradcam" else None
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    transform = loaded.eval_transform(native_size=None)
    results: list[Explained] = []
    stems: set[str] = set()
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        prepared = [prepare_image(p, transform) for p in chunk]
        for path, item in zip(chunk, prepared, strict=True):
            if isinstance(item, str):
                results.append(Explained(path=path, error=item))
                continue
            result = Explained(path=path)
            _explain_one(loaded, item, result, method=method, target=target,
                         class_name=class_name, top_k=top_k, out=out,
                         stem=_unique_stem(Path(path).stem, stems))
            results.append(result)
    report = ExplainReport(output=out, method=method,
                           layer=None if target is None else target.name, results=results)
    _write_json(out / "explanations.json", to_dict(report))
    return report


def _explain_one(loaded: LoadedModel, image: torch.Tensor, result: Explained, *, method: str,
                 target: TargetLayer | None, class_name: str | None, top_k: int, out: Path,
                 stem: str) -> None:
    probs = class_probabilities(loaded, image)
    multilabel = loaded.record.multilabel
    order = probs.argsort(descending=True).tolist()
    result.top = [(loaded.classes[i], float(probs[i])) for i in order[:top_k]]
    if class_name is not None:
        chosen = [loaded.classes.index(class_name)]
    elif multilabel:
        thresholds = loaded.record.decision_thresholds()
        chosen = [i for i in order if float(probs[i]) >= thresholds[i]] or order[:1]
    else:
        chosen = order[:1]
    for index, (picture, (x, y), heatmap) in zip(
            chosen, overlays(loaded, image, chosen, method=method, target=target), strict=True):
        name = loaded.classes[index]
        png = f"{stem}.{_safe(name)}.{method}.png"
        atomic_write(out / png, lambda handle, pic=picture: pic.save(handle, format="PNG"))
        height, width = heatmap.shape
        result.explained.append({
            "class": name, "prob": float(probs[index]), "heatmap": png,
            "peak": {"x": x, "y": y, "x_frac": (x + 0.5) / width, "y_frac": (y + 0.5) / height},
        })
    _write_json(out / f"{stem}.json", _result_dict(result))


def class_probabilities(loaded: Any, image: torch.Tensor) -> torch.Tensor:
    """One preprocessed image's probability of each class: the softmax, or each class's
    sigmoid for a multi-label model."""
    with torch.no_grad():
        logits = loaded.model(image[None].to(loaded.device)).float()[0]
    return logits.sigmoid() if loaded.record.multilabel else logits.softmax(dim=0)


def overlays(loaded: LoadedModel, image: torch.Tensor, classes: Sequence[int], *,
             method: str = "gradcam", target: TargetLayer | None = None
             ) -> list[tuple[Image.Image, tuple[int, int], torch.Tensor]]:
    """For one preprocessed image and each class index: the heatmap over the image as the model
    saw it, the map's peak (x, y) and the map (H, W in [0, 1])."""
    if method == "gradcam" and target is None:
        target = target_layer_for(loaded)
    batch = image[None].to(loaded.device)
    maps = heatmaps(loaded.model, batch.expand(len(classes), *batch.shape[1:]),
                    torch.tensor(list(classes), device=loaded.device), method=method,
                    target=target).cpu()
    view = model_view(image, loaded.mean_std)
    found = []
    for heatmap in maps:
        peak = peak_of(heatmap)
        found.append((overlay(view, heatmap.numpy(), peak), peak, heatmap))
    return found


def _unique_stem(stem: str, taken: set[str]) -> str:
    candidate, n = _safe(stem), 1
    while candidate in taken:
        n += 1
        candidate = f"{_safe(stem)}-{n}"
    taken.add(candidate)
    return candidate


def _safe(name: str) -> str:
    """A file-name-safe form of a class or file name."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in printable(name)) or "_"


def _result_dict(r: Explained) -> dict[str, Any]:
    if r.error is not None:
        return {"path": printable(r.path), "error": printable(r.error)}
    return {"path": printable(r.path),
            "top": [{"class": printable(c), "prob": p} for c, p in r.top],
            "explained": r.explained}


def to_dict(report: ExplainReport) -> dict[str, Any]:
    """What ``explanations.json`` holds (and ``imgcls explain --json`` prints)."""
    return {"method": report.method, "layer": report.layer, "output": str(report.output),
            "images": [_result_dict(r) for r in report.results if r.error is None],
            "errors": [_result_dict(r) for r in report.results if r.error is not None]}


def _write_json(path: Path, value: Any) -> None:
    data = (json.dumps(value, indent=2) + "\n").encode("utf-8")
    atomic_write(path, lambda handle: handle.write(data))
