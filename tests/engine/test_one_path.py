"""One home per concept: every evaluation scores through ``imgcls.deploy.scoring.score``, a
run is set up by ``imgcls.engine.setup.prepare_run``, and ``Trainer.load_state_dict`` puts back
exactly what the Checkpointer's ``record`` saved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import _make_image_folder

from imgcls import api
from imgcls.config import build_config
from imgcls.deploy import predict
from imgcls.deploy.load import load_model
from imgcls.deploy.scoring import score
from imgcls.engine.batches import Speed
from imgcls.engine.callbacks import Checkpointer
from imgcls.engine.setup import UserData, load_data, prepare_run, train_config
from imgcls.engine.trainer import Trainer
from imgcls.report.predictions import collect_predictions
from imgcls.runs.record import CheckpointRecord

CLASSES = ("a", "b", "c")
FAST = {"model.name": "lenet", "loader.batch_size": 16, "optim.lr": 0.05,
        "sched.warmup_epochs": 0.0, "log.progress": "off", "log.tensorboard": False}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("one_path")
    data = _make_image_folder(root / "imgs", classes=CLASSES, per_class=16, size=32,
                              layout="train_val")
    return api.train(build_config(overrides={
        **FAST, "data.source": str(data), "train.epochs": 2, "train.ema": 0.9,
        "train.lookahead_every": 2, "log.output": str(root / "runs"), "log.name": "run",
    })).run_dir


def test_evaluate_report_and_predict_score_a_split_through_score(run, tmp_path):
    ckpt = run / "checkpoints" / "last.pt"
    loaded = load_model(ckpt, device="cpu")
    scores = score(loaded, split="val", tta="flip")
    logits, labels = scores.logits(), scores.labels()
    assert labels is not None and logits.dtype == torch.float32
    assert logits.shape == (len(labels), len(CLASSES)) == (len(scores.dataset), 3)
    summary = api.evaluate_checkpoint(ckpt, split="val", device="cpu", tta="flip",
                                      output=tmp_path / "eval")
    right = (logits.argmax(dim=1) == labels).double().mean().item()
    assert summary["n"] == len(labels) and summary["top1"] == pytest.approx(right, abs=1e-12)
    report = collect_predictions(load_model(ckpt, device="cpu", overrides={"train.tta": "flip"}),
                                 run, split="val")
    assert np.array_equal(report.labels, labels.numpy())
    assert np.array_equal(report.probs, torch.softmax(logits.double(), dim=1).numpy())
    # predict scores the files of the same split alike (the val split is the val/ folder)
    tops = predict.predict(ckpt, [run.parent.parent / "imgs" / "val"], top_k=1, device="cpu",
                           tta=True)
    predicted = [r.top[0][0] == Path(r.path).parent.name for r in tops.results]
    assert sum(predicted) / len(predicted) == pytest.approx(right, abs=1e-12)


def test_score_files_keeps_their_order_and_says_which_are_unread(run, tmp_path):
    loaded = load_model(run / "checkpoints" / "last.pt", device="cpu")
    images = sorted(str(p) for p in (run.parent.parent / "imgs" / "val").rglob("*.*"))[:5]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    paths = images[:2] + [str(broken)] + images[2:]
    scores = score(loaded, files=paths, batch_size=2, tta="none", speed=Speed())
    assert scores.labels() is None and scores.dataset is None
    assert list(scores.errors) == [2]
    one_by_one = score(loaded, files=images, batch_size=1, tta="none", speed=Speed()).logits()
    assert torch.allclose(scores.logits(), one_by_one, atol=1e-6)
    with pytest.raises(ValueError, match="split or files"):
        score(loaded, split="val", files=images)


def _same(a: Any, b: Any, where: str = "") -> None:
    """``a`` and ``b`` hold the same values, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, set(a) ^ set(b))
        for key in a:
            _same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def test_load_state_dict_restores_what_record_saves(run):
    saved = CheckpointRecord.load(run / "checkpoints" / "last.pt")
    cfg, resumed = train_config(resume=run, overrides={"train.epochs": 3})
    assert resumed is not None
    data = load_data(cfg, resumed, UserData())
    prepared = prepare_run(cfg, data, device=torch.device("cpu"), resuming=True)
    trainer = Trainer(prepared.state, prepared.loaders.train, prepared.loaders.val,
                      epochs=cfg.train.epochs, classes=data.classes, monitor=None)
    trainer.load_state_dict(resumed.record, resumed.path)
    again = Checkpointer(run, saved).record(trainer)
    for field in ("model", "optimizer", "scheduler", "epoch", "step", "best_metric",
                  "best_epoch", "metrics", "rng", "ema", "scaler", "callbacks", "weight_hooks"):
        _same(getattr(saved, field), getattr(again, field), field)
