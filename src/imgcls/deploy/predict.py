"""``imgcls predict``: top-k classes and probabilities for image files, folders and list files.

The model, its classes and its preprocessing all come from the checkpoint
(:func:`imgcls.deploy.load.load_model`), images are decoded by the same :func:`imgcls.data.load_rgb`
as in training and scored by :func:`imgcls.deploy.scoring.score` as evaluate scores them, so
a prediction sees exactly what the validation pass saw. A file that cannot be read becomes a
result with ``error`` set; the rest are still classified. With ``min_confidence`` each image
also gets an ``answer``: its top-1 class, or ``unknown`` when the top-1 probability is below it
(selective classification; ``imgcls report`` shows which confidence keeps which accuracy).

>>> report = predict("runs/NAME/checkpoints/best.pt", ["photos/"], top_k=3)  # doctest: +SKIP
>>> print(to_table(report))                                                  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from imgcls.data import IMAGE_EXTENSIONS
from imgcls.data.folder import walk_images
from imgcls.data.listfile import list_lines, split_entry
from imgcls.deploy.load import load_model
from imgcls.deploy.scoring import prepare_image, score
from imgcls.engine.batches import Speed
from imgcls.engine.evaluation import batch_logits
from imgcls.errors import ImgclsError
from imgcls.files import atomic_write, printable
from imgcls.models.user import CodeConsent

LIST_SUFFIX = ".txt"
CSV_HEADER = ["path", "rank", "class", "prob", "error"]
UNKNOWN = "unknown"  # the answer below --min-confidence
MULTILABEL_CSV_HEADER = ["path", "rank", "class", "prob", "label", "error"]


@dataclass
class PredictResult:
    """One input image: its top-k ``(class, probability)`` pairs, highest first, or an error.
    A multi-label model's probabilities are each class's own (sigmoid), and ``labels`` lists
    the classes at or above their decision thresholds, highest first."""

    path: str
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None  # one-line reason the file could not be read; ``top`` is then empty
    labels: list[tuple[str, float]] | None = None  # multi-label models only
    answer: str | None = None  # with min_confidence: the top-1 class, or UNKNOWN below it


@dataclass
class PredictReport:
    checkpoint: str
    classes: list[str]
    results: list[PredictResult]  # in input order
    thresholds: list[float] | None = None  # a multi-label model's, one per class
    min_confidence: float | None = None  # the --min-confidence asked for, if any

    @property
    def failed(self) -> int:
        """How many inputs could not be read."""
        return sum(r.error is not None for r in self.results)


# --------------------------------------------------------------------------- inputs


def _scan_folder(folder: Path) -> list[str]:
    """Every visible image under ``folder``, recursively, in sorted path order; as in training,
    hidden files and folders are skipped and symlinks give each real file once, never looping."""
    return sorted(path for path, _ in walk_images(folder, [""])[0])


def _read_list_file(list_file: Path) -> list[str]:
    """Image paths of a list file (``path [label]`` per line, ``#`` comments), resolved against
    the list file's folder: training's list files work as they are, labels ignored. A path that
    does not exist is kept and reported as that image's error, not as a failure of the run."""
    base = list_file.parent
    return [os.path.join(base, split_entry(line, base)[0]) for _, line in list_lines(list_file)]


def collect_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Expand image files, folders and ``.txt`` list files into image paths, in the order given
    (each path once). A missing input, or no image at all, is an ImgclsError."""
    paths: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths += _scan_folder(path)
        elif path.is_file():
            paths += _read_list_file(path) if path.suffix.lower() == LIST_SUFFIX else [str(item)]
        else:
            raise ImgclsError(f"input not found: {item}")
    if not paths:
        names = ", ".join(str(i) for i in inputs)
        raise ImgclsError(f"no images found in {names} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return list(dict.fromkeys(paths))  # a file named twice (folder + file) is predicted once


# --------------------------------------------------------------------------- prediction


# predict's one place that loads an image: the scoring's (tests call it by this name)
_prepare = prepare_image


def _tta_mode(tta: bool) -> str:
    """``--tta``: evaluate's ``train.tta=flip``."""
    return "flip" if tta else "none"


def _classify(logits: torch.Tensor, classes: Sequence[str], k: int,
              thresholds: Sequence[float] | None = None) -> list[PredictResult]:
    """Top-k ``(class, probability)`` pairs, highest first, for one batch of logits (path not
    yet set): softmax probabilities, or with ``thresholds`` (a multi-label model) each class's
    sigmoid and the labels at or above their thresholds."""
    probs = logits.float().softmax(dim=1) if thresholds is None else logits.float().sigmoid()
    top_probs, top_index = (t.cpu().tolist() for t in probs.topk(k, dim=1))
    results = [
        PredictResult(path="", top=[(classes[i], p) for i, p in zip(index, prob, strict=True)])
        for index, prob in zip(top_index, top_probs, strict=True)
    ]
    if thresholds is not None:
        above = (probs >= torch.tensor(thresholds, device=probs.device)).cpu()
        ordered = probs.argsort(dim=1, descending=True).cpu().tolist()
        values = probs.cpu().tolist()
        for result, row, order, kept in zip(results, values, ordered, above, strict=True):
            result.labels = [(classes[i], row[i]) for i in order if kept[i]]
    return results


def classify_batch(loaded: Any, images: torch.Tensor, *, top_k: int = 5, tta: bool = False,
                   min_confidence: float | None = None,
                   thresholds: Sequence[float] | None = None) -> list[PredictResult]:
    """predict's results (path unset) for a batch of preprocessed images, scored as predict
    scores files (fp32, plain inputs): ``imgcls serve`` answers with these."""
    with torch.no_grad():
        logits = batch_logits(loaded.model, images, loaded.device, speed=Speed(),
                              tta=_tta_mode(tta))
    if thresholds is None and loaded.record.multilabel:
        thresholds = loaded.record.decision_thresholds()
    results = _classify(logits, loaded.classes, min(top_k, len(loaded.classes)), thresholds)
    if min_confidence is not None:
        for result in results:
            result.answer = answer(result.top, min_confidence)
    return results


def predict(
    checkpoint: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    *,
    top_k: int = 5,
    batch_size: int = 64,
    device: str = "auto",
    tta: bool = False,
    trust_pickle: bool = False,
    code: CodeConsent | None = None,
    threshold: float | None = None,
    min_confidence: float | None = None,
) -> PredictReport:
    """Classify every image in ``inputs``; returns a report with one result per image.

    ``top_k`` is capped at the number of classes. ``tta`` adds the horizontal flip, scored as
    ``evaluate`` with ``train.tta=flip`` scores it: both score through
    :func:`imgcls.deploy.scoring.score`. A multi-label model also lists each image's labels
    at or above the checkpoint's decision thresholds (``threshold``: one for every class).
    ``min_confidence`` (0-1; one label per image) sets each result's ``answer``.
    """
    if top_k < 1:
        raise ImgclsError(f"--top-k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise ImgclsError(f"--batch-size must be at least 1, got {batch_size}")
    if min_confidence is not None and not 0.0 <= min_confidence <= 1.0:
        raise ImgclsError(f"--min-confidence is a probability from 0 to 1, got {min_confidence:g}")
    paths = collect_inputs(inputs)  # check the inputs before the (slower) model load
    loaded = load_model(checkpoint, device=device, trust_pickle=trust_pickle, code=code)
    if min_confidence is not None and loaded.record.multilabel:
        raise ImgclsError(f"--min-confidence answers 'unknown' for one label per image; "
                          f"{checkpoint} has several labels per image: use --threshold")
    if threshold is not None and not loaded.record.multilabel:
        raise ImgclsError(f"--threshold is for models with several labels per image; "
                          f"{checkpoint} picks one class per image")
    thresholds = loaded.record.decision_thresholds(threshold) if (
        loaded.record.multilabel) else None
    # in fp32 with plain inputs (predict's own speed, whatever the run trained with)
    scores = score(loaded, files=paths, batch_size=batch_size, tta=_tta_mode(tta), speed=Speed())
    k = min(top_k, len(loaded.classes))
    classified = iter([result for logits, _ in scores.batches
                       for result in _classify(logits, loaded.classes, k, thresholds)])
    results = [PredictResult(path=path, error=scores.errors[i]) if i in scores.errors
               else dataclasses.replace(next(classified), path=path)
               for i, path in enumerate(paths)]
    if min_confidence is not None:
        for result in results:
            if result.error is None:
                result.answer = answer(result.top, min_confidence)
    return PredictReport(checkpoint=str(checkpoint), classes=list(loaded.classes), results=results,
                         thresholds=thresholds, min_confidence=min_confidence)


def answer(top: Sequence[tuple[str, float]], min_confidence: float) -> str:
    """The top-1 class when its probability is at least ``min_confidence``, else ``unknown``.

    >>> answer([("cat", 0.7), ("dog", 0.2)], 0.5), answer([("cat", 0.4)], 0.5)
    ('cat', 'unknown')
    """
    name, prob = top[0]
    return name if prob >= min_confidence else UNKNOWN


# --------------------------------------------------------------------------- output


def to_table(report: PredictReport) -> str:
    """An aligned text table: path, top-1 class and probability, then the rest of the top-k.

    A file that could not be read gets ``error: <reason>`` after its path; a multi-label
    model's labels (at or above their thresholds) come right after it.
    """
    k = max((len(r.top) for r in report.results), default=1) or 1
    # File names that are not UTF-8 are shown with U+FFFD: printing their surrogates would raise.
    paths = [printable(r.path) for r in report.results]
    path_w = max([len("path"), *(len(p) for p in paths)])
    class_w = max([len(f"top-{k}"), *(len(c) for c in report.classes)])
    header = [f"{'path':<{path_w}}"]
    multilabel = report.thresholds is not None
    label_texts = [", ".join(f"{printable(c)} {p:.2f}" for c, p in r.labels or []) or "(none)"
                   for r in report.results] if multilabel else []
    label_w = max([len("labels"), *(len(t) for t in label_texts)]) if multilabel else 0
    if multilabel:
        header.append(f"{'labels':<{label_w}}")
    answers = report.min_confidence is not None
    answer_w = max([len("answer"), len(UNKNOWN), *(len(c) for c in report.classes)])
    if answers:
        header.append(f"{'answer':<{answer_w}}")
    for rank in range(1, k + 1):
        header += [f"{f'top-{rank}':<{class_w}}", f"{'prob':>6}"]
    lines = ["  ".join(header)]
    for path, result in zip(paths, report.results, strict=True):
        cells = [f"{path:<{path_w}}"]
        if result.error is not None:
            cells.append(f"error: {printable(result.error)}")
        elif multilabel:
            cells.append(f"{label_texts[len(lines) - 1]:<{label_w}}")
        elif answers:
            cells.append(f"{printable(result.answer or ''):<{answer_w}}")
        for name, prob in result.top:
            cells += [f"{printable(name):<{class_w}}", f"{prob:6.4f}"]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def to_json(report: PredictReport) -> str:
    """One JSON object: checkpoint, classes, predictions (path, top) and errors (path, error);
    a multi-label model's adds ``thresholds`` and each prediction's ``labels``;
    ``min_confidence`` adds itself and each prediction's ``answer``."""
    return json.dumps(to_dict(report))


def to_dict(report: PredictReport) -> dict[str, Any]:
    """:func:`to_json`'s object."""
    def prediction(r: PredictResult) -> dict[str, Any]:
        out: dict[str, Any] = {"path": printable(r.path),
                               "top": [{"class": printable(c), "prob": p} for c, p in r.top]}
        if r.labels is not None:
            out["labels"] = [{"class": printable(c), "prob": p} for c, p in r.labels]
        if r.answer is not None:
            out["answer"] = printable(r.answer)
        return out

    extra: dict[str, Any] = {} if report.thresholds is None else {
        "thresholds": report.thresholds}
    if report.min_confidence is not None:
        extra["min_confidence"] = report.min_confidence
    return {
        "checkpoint": printable(report.checkpoint),
        "classes": [printable(c) for c in report.classes],
        **extra,
        "predictions": [prediction(r) for r in report.results if r.error is None],
        "errors": [{"path": printable(r.path), "error": printable(r.error)}
                   for r in report.results if r.error is not None],
    }


def write_csv(report: PredictReport, path: str | os.PathLike[str]) -> None:
    """Write ``path,rank,class,prob,error``: one row per top-k entry, one row (with only
    ``error`` filled) per unreadable file. A multi-label model's file has a ``label`` column
    (1: at or above the class's threshold) and a row for every label, in the top-k or not;
    with ``--min-confidence`` an ``answer`` column (the image's answer, on each of its rows).
    Written to a temporary file then renamed, so a reader never sees half a file."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    multilabel = report.thresholds is not None
    answers = report.min_confidence is not None
    header = MULTILABEL_CSV_HEADER if multilabel else CSV_HEADER
    writer.writerow(header + (["answer"] if answers else []))
    for result in report.results:
        shown = printable(result.path)  # a non-UTF-8 name would make encode("utf-8") raise
        answer_cell = [printable(result.answer or "")] if answers else []
        if result.error is not None:
            writer.writerow([shown, "", "", "", *([""] if multilabel else []),
                             printable(result.error), *answer_cell])
        labels = dict(result.labels or [])
        rows = list(result.top) + [(c, p) for c, p in labels.items()
                                   if c not in dict(result.top)]
        for rank, (name, prob) in enumerate(rows, start=1):
            label = [int(name in labels)] if multilabel else []
            writer.writerow([shown, rank if rank <= len(result.top) else "", printable(name),
                             repr(prob), *label, "", *answer_cell])
    data = text.getvalue().encode("utf-8")
    try:
        atomic_write(Path(path), lambda handle: handle.write(data))
    except OSError as exc:
        raise ImgclsError(f"cannot write {path}: {exc.strerror or exc}") from None
