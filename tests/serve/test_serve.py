"""imgcls serve: /predict answers as predict --json does (raw bodies, multipart, several files),
/info and /health, batching of concurrent requests, bad requests as JSON errors with the right
status while the server keeps serving, and the real command on 127.0.0.1."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import _make_image_folder
from fastapi.testclient import TestClient
from PIL import Image

from imgcls import api
from imgcls.config import build_config
from imgcls.deploy import predict
from imgcls.serve.app import create_app

CLASSES = ("ants", "bees", "wasps")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve")
    data = _make_image_folder(root / "imgs", classes=CLASSES, per_class=16, size=32)
    result = api.train(build_config(overrides={
        "data.source": str(data), "model.name": "lenet", "train.epochs": 2,
        "loader.batch_size": 16, "optim.lr": 0.05, "sched.warmup_epochs": 0.0,
        "log.output": str(root / "runs"), "log.name": "run", "log.progress": "off",
        "log.tensorboard": False}))
    return result.run_dir / "checkpoints" / "last.pt"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = _make_image_folder(tmp_path_factory.mktemp("imgs") / "x", classes=CLASSES,
                                per_class=4, seed=3)
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _client(ckpt: Path, **options) -> TestClient:
    return TestClient(create_app(ckpt, **options))


def test_predict_equals_predict_json(ckpt, images):
    expected = json.loads(predict.to_json(predict.predict(ckpt, images, top_k=2, device="cpu")))
    with _client(ckpt, max_batch=1) as client:
        files = [("file", (str(p), p.read_bytes())) for p in images]
        got = client.post("/predict?top_k=2", files=files)
        assert got.status_code == 200, got.text
        assert got.json() == expected
        one = client.post(f"/predict?top_k=2&name={images[0]}", content=images[0].read_bytes(),
                          headers={"content-type": "image/png"})
        assert one.json()["predictions"] == expected["predictions"][:1]
        cut = expected["predictions"][0]["top"][0]["prob"]
        answered = client.post("/predict?min_confidence=" + repr(cut), files=files[:1]).json()
        assert answered["predictions"][0]["answer"] == expected["predictions"][0]["top"][0][
            "class"] and answered["min_confidence"] == cut


def test_info_and_health(ckpt):
    with _client(ckpt) as client:
        assert client.get("/health").json() == {"status": "ok"}
        info = client.get("/info").json()
    assert info["classes"] == list(CLASSES) and info["input_size"] == 32
    assert info["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert "val_acc" in info["metrics"] and info["multilabel"] is False


def test_concurrent_requests_are_batched_and_answered_alike(ckpt, images):
    expected = json.loads(predict.to_json(predict.predict(ckpt, images, device="cpu")))
    by_path = {p["path"]: p for p in expected["predictions"]}
    with _client(ckpt, max_batch=8, max_wait_ms=200) as client:
        def one(path: Path) -> dict:
            return client.post(f"/predict?name={path}", content=path.read_bytes()).json()

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(one, images[:8]))
        batches = client.app.state.batcher.batches
    assert max(batches) > 1 and sum(batches) == 8  # several requests shared a forward pass
    for answer in answers:
        (got,) = answer["predictions"]
        want = by_path[got["path"]]
        assert [t["class"] for t in got["top"]] == [t["class"] for t in want["top"]]
        assert [t["prob"] for t in got["top"]] == pytest.approx(
            [t["prob"] for t in want["top"]], abs=1e-6)


def _bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (12_000, 12_000)).save(buffer, format="PNG")  # 144 MP, ~140 KB
    return buffer.getvalue()


def test_a_burst_of_bad_requests_between_good_ones(ckpt, images):
    good = images[0].read_bytes()
    with _client(ckpt, max_bytes=200_000) as client:
        expected = client.post("/predict", content=good).json()
        bad = [
            (client.post("/predict", content=b"this is not an image"), 400, "not a recognised"),
            (client.post("/predict", content=b"x" * 300_000), 413, "over the limit"),
            (client.post("/predict", content=_bomb()), 413, "megapixels"),
            (client.post("/predict", content=b""), 400, "empty"),
            (client.post("/predict", files=[("other", ("a.png", good))]), 400, "'file'"),
            (client.post("/predict?top_k=0", content=good), 400, "top_k"),
            (client.get("/nope"), 404, "Not Found"),
            (client.get("/predict"), 405, "Method Not Allowed"),
        ]
        for response, status, words in bad:
            assert response.status_code == status, response.text
            assert words in response.json()["error"]
            assert client.post("/predict", content=good).json() == expected
        mixed = client.post("/predict", files=[("file", ("a.png", good)),
                                               ("file", ("b.png", b"broken"))]).json()
        assert [p["path"] for p in mixed["predictions"]] == ["a.png"]
        assert [e["path"] for e in mixed["errors"]] == ["b.png"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening_addresses(port: int) -> set[str]:
    """The IPv4 addresses listening on ``port``, from the kernel's socket table (Linux)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def test_the_command_serves_on_localhost(ckpt, images):
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([sys.executable, "-m", "imgcls", "serve", str(ckpt), "--port",
                               str(port), "--device", "cpu"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                with urllib.request.urlopen(base + "/health", timeout=1) as r:
                    if json.load(r) == {"status": "ok"}:
                        break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail(f"no server: {server.stderr.read() if server.poll() is not None else ''}")
        request = urllib.request.Request(base + f"/predict?name={images[0]}",
                                         data=images[0].read_bytes(), method="POST")
        with urllib.request.urlopen(request, timeout=30) as r:
            answer = json.load(r)
        expected = json.loads(predict.to_json(predict.predict(ckpt, images[:1], device="cpu")))
        assert answer == expected
        assert _listening_addresses(port) == {"127.0.0.1"}  # not 0.0.0.0: this machine only
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_explain_endpoint_gives_the_heatmap(ckpt, images):
    with _client(ckpt) as client:
        answer = client.post("/explain", content=images[0].read_bytes()).json()
        expected = client.post("/predict", content=images[0].read_bytes()).json()
        page = client.get("/")
    assert answer["class"] == expected["predictions"][0]["top"][0]["class"]
    assert answer["layer"] == "pool"
    picture = Image.open(io.BytesIO(__import__("base64").b64decode(answer["heatmap_png"])))
    assert picture.size == (224, 224)
    assert page.status_code == 200 and 'id="file"' in page.text


class Browser:
    """Headless Chromium driven over the DevTools protocol (a websocket): enough to open a
    page, give a file input a file as a person picking it would, read the DOM, screenshot."""

    def __init__(self, exe: str, profile: Path) -> None:
        port = _free_port()
        self.process = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
             f"--remote-debugging-port={port}", "--window-size=1100,900", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=1) as r:
                    pages = [t for t in json.load(r) if t["type"] == "page"]
                if pages:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        from websockets.sync.client import connect

        self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None).__enter__()
        self.next_id = 0

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message["result"]

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression,
                         returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, seconds: float = 60):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        pytest.fail(f"timed out waiting for {expression}")

    def close(self) -> None:
        self.ws.close()
        self.process.terminate()
        self.process.wait(timeout=30)


def test_the_page_in_a_browser_upload_and_result(ckpt, images, tmp_path):
    from conftest import chromium

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "imgcls", "serve", str(ckpt), "--port",
                               str(port), "--device", "cpu"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    browser = Browser(chromium(), tmp_path / "profile")
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                urllib.request.urlopen(base + "/health", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        browser.call("Page.enable")
        browser.call("Page.navigate", url=base + "/")
        browser.wait_for("document.readyState === 'complete' && "
                         "document.getElementById('model').textContent")
        node = browser.call("DOM.querySelector", selector="#file",
                            nodeId=browser.call("DOM.getDocument")["root"]["nodeId"])["nodeId"]
        browser.call("DOM.setFileInputFiles", files=[str(images[0])], nodeId=node)
        browser.wait_for("document.body.dataset.done === '1'")
        shown = browser.evaluate("document.getElementById('label').textContent")
        bars = browser.evaluate("document.querySelectorAll('#top .bar').length")
        heatmap = browser.evaluate("document.getElementById('heatmap').naturalWidth")
        shot = __import__("base64").b64decode(browser.call("Page.captureScreenshot")["data"])
        (tmp_path / "page.png").write_bytes(shot)
    finally:
        browser.close()
        server.terminate()
        server.wait(timeout=30)
    expected = predict.predict(ckpt, images[:1], device="cpu").results[0].top
    assert shown == expected[0][0] and bars == len(CLASSES) and heatmap == 224
    assert Image.open(tmp_path / "page.png").size[0] >= 1000


def test_an_onnx_export_is_served_by_onnx_runtime(ckpt, images, tmp_path):
    from imgcls.deploy.export import export_checkpoint

    report = export_checkpoint(ckpt, fmt="onnx", output=tmp_path / "m.onnx")
    expected = json.loads(predict.to_json(predict.predict(ckpt, images, device="cpu")))
    with _client(report.path) as client:
        files = [("file", (str(p), p.read_bytes())) for p in images]
        got = client.post("/predict", files=files).json()
        info = client.get("/info").json()
        explained = client.post("/explain", content=images[0].read_bytes())
    assert info["classes"] == list(CLASSES) and info["model"] == "onnx:m.onnx"
    assert info["sha256"] == hashlib.sha256(report.path.read_bytes()).hexdigest()
    for a, b in zip(got["predictions"], expected["predictions"], strict=True):
        assert a["path"] == b["path"]
        assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
        assert [t["prob"] for t in a["top"]] == pytest.approx([t["prob"] for t in b["top"]],
                                                              abs=1e-5)
    assert explained.status_code == 501 and "gradients" in explained.json()["error"]
