"""Grad-CAM on the report's page: what the predicted class rests on in the most confidently
wrong images, and for each most-confused pair its most confident example, explained for the
predicted and for the true class. A model Grad-CAM cannot read (no layer keeps a map of the
image) gets a note instead of the pictures; the rest of the page does not depend on it."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch

from imgcls.deploy.load import LoadedModel
from imgcls.errors import ImgclsError
from imgcls.explain.explainer import overlays, target_layer_for
from imgcls.report import page
from imgcls.report.predictions import Predictions

THUMB = 96  # px: a heatmap cell on the page
PAIRS = 3  # most-confused pairs shown with an example


def _png(picture) -> bytes:
    picture = picture.copy()
    picture.thumbnail((THUMB, THUMB))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _model_input(loaded: LoadedModel, preds: Predictions, index: int) -> torch.Tensor:
    transform = loaded.eval_transform(native_size=loaded.native_size)
    return transform(preds.dataset[index][0])


def explained_cells(loaded: LoadedModel, preds: Predictions, items: Sequence[tuple[int, int]],
                    captions: Sequence[str]) -> list[tuple[bytes, str, str, bool]]:
    """One thumbnail cell per ``(image index, class index)``: Grad-CAM of that class."""
    target = target_layer_for(loaded)
    cells = []
    for (index, klass), caption in zip(items, captions, strict=True):
        ((picture, _, _),) = overlays(loaded, _model_input(loaded, preds, index), [klass],
                                      target=target)
        correct = int(preds.labels[index]) == klass
        cells.append((_png(picture), f"Grad-CAM of {preds.classes[klass]} on image {index}",
                      caption, correct))
    return cells


def top_loss_heatmaps_html(loaded: LoadedModel, preds: Predictions,
                           chosen: np.ndarray) -> str:
    """Grad-CAM of the predicted class for each of the wrong images shown."""
    if not len(chosen):
        return ""
    try:
        cells = explained_cells(
            loaded, preds, [(int(i), int(preds.predicted[i])) for i in chosen],
            [f"image {int(i)}: why {preds.classes[preds.predicted[i]]}" for i in chosen])
    except ImgclsError as exc:
        return f'<p class="note">no heatmaps: {page.esc(exc)}</p>'
    layer = target_layer_for(loaded).name
    return (f"<h3>What the wrong answers rest on (Grad-CAM at <code>{page.esc(layer)}</code>)"
            "</h3><p>Each image above, as the model saw it, with the Grad-CAM heatmap of the "
            "predicted class (red: most support; the ring marks the peak). "
            "<code>imgcls explain</code> makes these for any image.</p>"
            + page.thumbnails(cells))


def confused_pairs_heatmaps_html(loaded: LoadedModel, preds: Predictions,
                                 pairs: Sequence[dict]) -> str:
    """For each of the first PAIRS most-confused pairs, its most confident example explained
    for the predicted and for the true class."""
    index_of = {name: k for k, name in enumerate(preds.classes)}
    items, captions = [], []
    for pair in pairs[:PAIRS]:
        t, p = index_of[pair["true"]], index_of[pair["predicted"]]
        members = np.flatnonzero((preds.labels == t) & (preds.predicted == p))
        if not len(members):
            continue
        example = int(members[np.argmax(preds.probs[members, p])])
        items += [(example, p), (example, t)]
        captions += [f"{pair['true']} as {pair['predicted']}:\nwhy {pair['predicted']}",
                     f"image {example}:\nwhy {pair['true']}"]
    if not items:
        return ""
    try:
        cells = explained_cells(loaded, preds, items, captions)
    except ImgclsError as exc:
        return f'<p class="note">no heatmaps: {page.esc(exc)}</p>'
    return ("<h3>An example of each pair, explained</h3><p>The most confident mistake of each "
            "of the first pairs: Grad-CAM of the predicted class, then of the true class.</p>"
            + page.thumbnails(cells))
