"""``imgcls serve`` under load: requests per second and latency (p50, p99) at 1, 8 and 32
concurrent clients, with batching on (``--max-batch 32 --max-wait-ms 5``, the defaults) and off
(``--max-batch 1``), against the same checkpoint in one invocation.

Each configuration runs its own server process (``python -m imgcls serve`` on 127.0.0.1); the
clients are threads in this process, each posting one image at a time (the body: a PNG of the
model's input size, different per client) and waiting for the answer, for ``--seconds`` after
a warm-up. Latency is measured per request from send to answer. The server and the clients
share the machine's cores: on 2 cores the clients' own cost is part of the figure.

    python benchmarks/serve_load.py --checkpoint runs/NAME/checkpoints/best.pt
    python benchmarks/serve_load.py            # trains resnet20 on the bundled digits first

Prints the machine, commit and command, a table, then one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import io
import json
import shlex
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
from own_folder import cpu_model, git_commit
from PIL import Image

CLIENTS = (1, 8, 32)
MODES = {"batching": ["--max-batch", "32", "--max-wait-ms", "5"], "no batching":
         ["--max-batch", "1"]}


def train_digits(work: Path) -> Path:
    from imgcls import api
    from imgcls.config import build_config

    cfg = build_config(overrides={"data.source": "digits", "data.root": str(work / "cache"),
                                  "model.name": "resnet20",
                                  "train.epochs": 2, "log.output": str(work),
                                  "log.name": "serve-load", "log.progress": "off",
                                  "log.tensorboard": False})
    return api.train(cfg).run_dir / "checkpoints" / "last.pt"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: Path, options: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "imgcls", "serve", str(checkpoint),
                               "--port", str(port), "--device", "cpu", *options],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(base + "/health", timeout=1).close()
            return server, base
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit(f"the server did not start: {server.stderr.read().decode()[-2000:]}")


def bodies(size: int, count: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
            buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def load(base: str, clients: int, seconds: float, images: list[bytes]) -> dict[str, float]:
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(k: int) -> None:
        body, mine = images[k % len(images)], []
        while time.perf_counter() < stop:
            request = urllib.request.Request(base + "/predict", data=body, method="POST")
            start = time.perf_counter()
            with urllib.request.urlopen(request, timeout=60) as answer:
                answer.read()
            mine.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    ms = np.array(latencies) * 1000
    return {"requests": len(ms), "requests_per_s": len(ms) / elapsed,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint (else trains one)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/imgcls-serve-load"))
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    parser.add_argument("--clients", default=",".join(map(str, CLIENTS)))
    args = parser.parse_args(argv)
    command = "python benchmarks/serve_load.py " + shlex.join(sys.argv[1:])
    print(f"imgcls {git_commit()}; CPU: {cpu_model()}\ncommand: {command}")
    checkpoint = args.checkpoint or train_digits(args.work)
    from imgcls.runs.record import CheckpointRecord

    size = CheckpointRecord.load(checkpoint).input_size
    images = bodies(size if isinstance(size, int) else max(size), 32)
    rows = []
    for mode, options in MODES.items():
        server, base = start_server(checkpoint, options)
        try:
            load(base, 4, 2.0, images)  # warm-up: first requests, the batcher's worker
            for clients in (int(c) for c in args.clients.split(",")):
                rows.append({"mode": mode, "clients": clients,
                             **load(base, clients, args.seconds, images)})
                print(f"{mode:12s} {clients:3d} clients: {rows[-1]['requests_per_s']:7.1f} "
                      f"req/s, p50 {rows[-1]['p50_ms']:7.1f} ms, p99 {rows[-1]['p99_ms']:7.1f} "
                      "ms", flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)
    by = {(r["mode"], r["clients"]): r for r in rows}
    ratios = {c: by[("batching", c)]["requests_per_s"] / by[("no batching", c)]["requests_per_s"]
              for _, c in by if ("no batching", c) in by and ("batching", c) in by}
    print("batching / no batching, requests per second: "
          + ", ".join(f"{c} clients {r:.2f}x" for c, r in ratios.items()))
    print(json.dumps({"rows": rows, "ratios": ratios, "checkpoint": str(checkpoint),
                      "input_size": size, "cpu": cpu_model(), "commit": git_commit(),
                      "command": command}))


if __name__ == "__main__":
    main()
