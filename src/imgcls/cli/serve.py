"""`imgcls serve`: a checkpoint behind HTTP, on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import argparse
from typing import Any


def add_serve(commands: Any) -> None:
    serve = commands.add_parser(
        "serve", help="serve a checkpoint over HTTP: POST /predict, GET /info, GET /health",
        description="POST /predict takes an image as the body, or a multipart upload with one "
        "or more 'file' fields, and answers what `imgcls predict --json` prints for the same "
        "images. Concurrent requests are scored together in batches. Needs the [serve] extra.",
    )
    serve.add_argument("checkpoint", help="a checkpoint (runs/NAME/checkpoints/best.pt), or an "
                       "ONNX file from imgcls export (run by ONNX Runtime)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-batch", type=int, default=32,
                       help="images scored together at most (1: no batching across requests)")
    serve.add_argument("--max-wait-ms", type=float, default=5.0,
                       help="how long the first request of a batch waits for others (ms)")
    serve.add_argument("--max-bytes", type=int, default=8 * 1024 * 1024,
                       help="largest request body accepted (default 8 MiB; more: 413)")
    serve.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    serve.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from imgcls.errors import ImgclsError

    try:
        import uvicorn

        from imgcls.serve.app import create_app
    except ImportError:
        raise ImgclsError("imgcls serve needs FastAPI and uvicorn: pip install "
                          "'imgcls[serve]'") from None
    app = create_app(args.checkpoint, device=args.device, max_batch=args.max_batch,
                     max_wait_ms=args.max_wait_ms, max_bytes=args.max_bytes)
    print(f"serving {args.checkpoint} on http://{args.host}:{args.port} "
          f"(POST /predict, GET /info, GET /health)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
