"""The HTTP API of ``imgcls serve`` (FastAPI): ``POST /predict``, ``GET /info``, ``GET /health``.

``GET /`` is a page where a person picks or drops an image and sees the top-k bars and the
Grad-CAM heatmap (``POST /explain``, the same upload, answers the heatmap as a base64 PNG).
``POST /predict`` takes an image as the request body (any ``Content-Type`` but multipart; the
``name`` query parameter names it, default ``upload``) or a ``multipart/form-data`` upload with
one or more ``file`` fields, and answers what ``imgcls predict --json`` prints for the same
images (``path``: the upload's file name), with ``top_k`` and ``min_confidence`` as query
parameters. Bodies over ``max_bytes`` are refused (413) while being read, before any decoding;
so are images whose header claims more than ``max_pixels`` pixels (decompression bombs, 413).
A body that is no image is 400, an unknown route 404; every error is JSON ``{"error": ...}``
and the server goes on serving. Checkpoints are read with ``weights_only`` (never unpickled).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from starlette.exceptions import HTTPException

from imgcls.data.folder import MAX_PIXELS, decode_rgb, own_pixel_check, pixel_limit_error
from imgcls.deploy.load import LoadedModel, load_model
from imgcls.deploy.predict import (
    PredictReport,
    PredictResult,
    answer,
    classify_batch,
    to_dict,
)
from imgcls.errors import ImgclsError
from imgcls.serve.batcher import MicroBatcher

PAGE = Path(__file__).with_name("page.html")  # the page at /: pick or drop an image
MAX_BYTES = 8 * 1024 * 1024  # per request: a few phone photos
MAX_FILES = 16  # per multipart request


class RequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_info(loaded: LoadedModel) -> dict[str, Any]:
    """``GET /info``: what the model takes and gives, and where it comes from."""
    record = loaded.record
    return {
        "checkpoint": str(loaded.path), "sha256": sha256_of(loaded.path),
        "classes": loaded.classes, "input_size": loaded.input_size,
        "mean_std": loaded.mean_std, "multilabel": record.multilabel,
        "thresholds": record.decision_thresholds() if record.multilabel else None,
        "epoch": record.epoch, "metrics": record.metrics, "model": loaded.config.model.name,
    }


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request's body, refused (413) as soon as it passes ``max_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise RequestError(413, f"request body of {int(declared)} bytes is over the limit of "
                           f"{max_bytes} bytes (imgcls serve --max-bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise RequestError(413, f"request body is over the limit of {max_bytes} bytes "
                               "(imgcls serve --max-bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


async def uploads(request: Request, max_bytes: int) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of each image of the request (module docstring)."""
    body = await read_body(request, max_bytes)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        if not body:
            raise RequestError(400, "empty request body: send an image, or a multipart "
                               "upload with the field 'file'")
        return [(request.query_params.get("name", "upload"), body)]

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    form = await Request(request.scope, replay).form(max_files=MAX_FILES)
    files = [f for f in form.getlist("file") if hasattr(f, "read")]
    if not files:
        raise RequestError(400, "the multipart upload has no field 'file' holding an image")
    return [(f.filename or "upload", await f.read()) for f in files]


def prepare(loaded: LoadedModel, transform: Any, name: str, data: bytes,
            max_pixels: int) -> torch.Tensor:
    """The model-ready tensor of one upload, as predict prepares a file; 413 for a header
    claiming too many pixels (before decoding), 400 for anything that is not an image."""
    try:
        with own_pixel_check(), Image.open(io.BytesIO(data)) as probe:
            too_big = pixel_limit_error(probe.size, max_pixels)
    except Exception:  # not an image: decode_rgb below names the reason
        too_big = None
    if too_big is not None:
        raise RequestError(413, f"{name}: {too_big}")
    try:
        return transform(decode_rgb(io.BytesIO(data), name, max_pixels))
    except ImgclsError as exc:
        raise RequestError(400, str(exc)) from None


def create_app(checkpoint: str | Path, *, device: str = "cpu", max_batch: int = 32,
               max_wait_ms: float = 5.0, max_bytes: int = MAX_BYTES,
               max_pixels: int = MAX_PIXELS, loaded: LoadedModel | None = None) -> FastAPI:
    """The FastAPI application serving ``checkpoint`` (an imgcls checkpoint, or an ONNX file
    exported by ``imgcls export``, run by ONNX Runtime)."""
    if loaded is None and str(checkpoint).lower().endswith(".onnx"):
        from imgcls.serve.onnx_model import load_onnx

        loaded = load_onnx(checkpoint)  # type: ignore[assignment]  # serving's duck type
    loaded = loaded or load_model(checkpoint, device=device)
    transform = loaded.eval_transform(native_size=None)
    info = model_info(loaded)
    batcher = MicroBatcher(lambda images: classify_batch(loaded, images, top_k=len(
        loaded.classes)), max_batch=max_batch, max_wait_ms=max_wait_ms)
    app = FastAPI(title="imgcls serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher, app.state.loaded = batcher, loaded

    @app.exception_handler(RequestError)
    async def request_error(_request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE.read_text(encoding="utf-8")

    @app.post("/explain")
    async def post_explain(request: Request, class_name: str | None = None) -> dict[str, Any]:
        """Grad-CAM of one image's predicted class (or ``class_name``): a PNG, base64."""
        (name, data), *more = await uploads(request, max_bytes)
        if more:
            raise RequestError(400, "/explain takes one image")
        image = prepare(loaded, transform, name, data, max_pixels)
        return await asyncio.get_running_loop().run_in_executor(
            None, explain_one, loaded, image, class_name)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/info")
    async def get_info() -> dict[str, Any]:
        return info

    @app.post("/predict")
    async def post_predict(request: Request, top_k: int = 5,
                           min_confidence: float | None = None) -> dict[str, Any]:
        files = await uploads(request, max_bytes)
        return await answer_predict(loaded, batcher, files, top_k, min_confidence,
                                    lambda name, data: prepare(loaded, transform, name, data,
                                                               max_pixels))

    return app


async def answer_predict(loaded: LoadedModel, batcher: MicroBatcher,
                         files: list[tuple[str, bytes]], top_k: int,
                         min_confidence: float | None, prepare_one: Any) -> dict[str, Any]:
    """``POST /predict``'s answer for the uploaded ``files``: predict --json's object. With
    several files an unreadable one is listed in ``errors``; alone, it is the request's 400."""
    if top_k < 1:
        raise RequestError(400, f"top_k must be at least 1, got {top_k}")
    if min_confidence is not None and not 0 <= min_confidence <= 1:
        raise RequestError(400, f"min_confidence is from 0 to 1, got {min_confidence:g}")
    if min_confidence is not None and loaded.record.multilabel:
        raise RequestError(400, "min_confidence is for one label per image; this model "
                           "has several labels per image")
    results: list[PredictResult | None] = [None] * len(files)
    ready: list[tuple[int, torch.Tensor]] = []
    for i, (name, data) in enumerate(files):
        try:
            ready.append((i, prepare_one(name, data)))
        except RequestError as exc:
            if len(files) == 1:
                raise
            results[i] = PredictResult(path=name, error=str(exc))
    scored = await batcher.submit(torch.stack([t for _, t in ready])) if ready else []
    for (i, _), result in zip(ready, scored, strict=True):
        results[i] = _trimmed(result, files[i][0], top_k, min_confidence)
    return to_dict(PredictReport(
        checkpoint=str(loaded.path), classes=list(loaded.classes),
        results=[r for r in results if r is not None],
        thresholds=loaded.record.decision_thresholds() if loaded.record.multilabel else None,
        min_confidence=min_confidence))


def explain_one(loaded: LoadedModel, image: torch.Tensor, class_name: str | None
                ) -> dict[str, Any]:
    """``POST /explain``'s answer: the class explained, its probability, the layer, the peak
    and the overlay PNG (base64); 501 without Captum."""
    from imgcls.explain.explainer import class_probabilities, overlays, target_layer_for

    if getattr(loaded, "onnx", False):
        raise RequestError(501, "heatmaps need the model's gradients: serve the checkpoint, "
                           "not its ONNX export")
    probs = class_probabilities(loaded, image)
    if class_name is not None and class_name not in loaded.classes:
        raise RequestError(400, f"class_name {class_name}: not one of {loaded.classes}")
    index = loaded.classes.index(class_name) if class_name else int(probs.argmax())
    try:
        target = target_layer_for(loaded)
        ((picture, (x, y), _),) = overlays(loaded, image, [index], target=target)
    except ImgclsError as exc:
        raise RequestError(501, str(exc)) from None
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return {"class": loaded.classes[index], "prob": float(probs[index]), "layer": target.name,
            "peak": {"x": x, "y": y}, "heatmap_png": base64.b64encode(buffer.getvalue()).decode()}


def _trimmed(result: PredictResult, name: str, top_k: int,
             min_confidence: float | None) -> PredictResult:
    """A batch result (scored with every class) cut to this request's ``top_k``."""
    top = result.top[:top_k]
    return replace(result, path=name, top=top,
                   answer=None if min_confidence is None else answer(top, min_confidence))
