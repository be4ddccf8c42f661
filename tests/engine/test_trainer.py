"""The training core: the Trainer's callbacks, the monitored metric (best.pt, plateau, early
stopping), callback state across --resume, the checkpoint record, and lr-find."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import InterruptDuringEpoch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from imgcls import api
from imgcls.cli import main
from imgcls.config import build_config
from imgcls.engine.trainer import Callback
from imgcls.errors import ImgclsError
from imgcls.runs.checkpoint import load_checkpoint, save_checkpoint
from imgcls.runs.record import CheckpointRecord

FAST = {
    "model.name": "lenet", "loader.batch_size": 16, "optim.lr": 0.02,
    "sched.warmup_epochs": 0.0, "log.progress": "off",
}


def _cfg(tmp_path: Path, source: Path, **overrides: object):
    values = {**FAST, "data.source": str(source), "log.output": str(tmp_path / "runs")}
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    return build_config(overrides=values)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def data(tmp_path, make_image_folder) -> Path:
    return make_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=20, size=32)


# --------------------------------------------------------------------------- selection metrics


def test_epochs_log_selection_metrics(tmp_path, data):
    run = api.train(_cfg(tmp_path, data, train__epochs=2, log__name="m")).run_dir
    rows = _metrics(run)
    for row in rows:
        for key in ("val_macro_f1", "val_balanced_acc", "val_macro_precision",
                    "val_macro_recall"):
            assert 0.0 <= row[key] <= 1.0, key
        assert set(row["val_per_class"]) == {"a", "b", "c"}
        scores = row["val_per_class"]["b"]
        assert {"precision", "recall", "f1", "support"} <= scores.keys()
        f1s = [c["f1"] for c in row["val_per_class"].values()]
        assert row["val_macro_f1"] == pytest.approx(sum(f1s) / 3)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"val/macro_f1", "val/balanced_acc", "val_class_f1/a", "val_class_recall/c"} <= set(
        scalars)
    assert events.Scalars("val/macro_f1")[-1].value == pytest.approx(rows[-1]["val_macro_f1"])


def test_evaluate_json_reports_precision_recall_f1(tmp_path, data, capsys):
    run = api.train(_cfg(tmp_path, data, train__epochs=2, log__name="e")).run_dir
    capsys.readouterr()
    assert main(["evaluate", str(run / "checkpoints" / "last.pt"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    confusion = [[int(v) for v in line.split(",")[1:]] for line in
                 (Path(summary["output"]) / "confusion_matrix.csv").read_text().splitlines()[1:]]
    for k, name in enumerate(("a", "b", "c")):
        tp, support = confusion[k][k], sum(confusion[k])
        predicted = sum(row[k] for row in confusion)
        scores = summary["per_class"][name]
        assert scores["support"] == support
        assert scores["recall"] == pytest.approx(tp / support)
        assert scores["precision"] == pytest.approx(tp / predicted if predicted else 0.0)
    recalls = [summary["per_class"][c]["recall"] for c in ("a", "b", "c")]
    assert summary["balanced_acc"] == pytest.approx(sum(recalls) / 3)
    assert summary["top1"] == _metrics(run)[-1]["val_acc"]
    assert summary["macro_f1"] == pytest.approx(_metrics(run)[-1]["val_macro_f1"])


def test_monitor_val_loss_picks_the_lowest_loss_epoch(tmp_path, data):
    # fp32: at this lr the tiny run diverges in bf16 autocast (a CPU with native bf16 turns it
    # on by default), and what is tested here is which epoch best.pt keeps
    result = api.train(_cfg(tmp_path, data, train__epochs=4, train__monitor="val_loss",
                            optim__lr=0.3, log__name="loss", train__amp="off"))
    rows = _metrics(result.run_dir)
    losses = [r["val_loss"] for r in rows]
    best_epoch = losses.index(min(losses)) + 1
    best = load_checkpoint(result.run_dir / "checkpoints" / "best.pt")
    assert best["epoch"] == best_epoch == result.best_epoch
    assert best["monitor"] == "val_loss" and result.best_metric == pytest.approx(min(losses))


def test_no_validation_set_keeps_best_equal_to_last(tmp_path, data, capsys):
    result = api.train(_cfg(tmp_path, data, train__epochs=2, data__val_fraction=0.0,
                            log__name="noval"))
    assert "no validation set" in capsys.readouterr().err
    assert result.best_metric is None
    ckpts = result.run_dir / "checkpoints"
    assert load_checkpoint(ckpts / "best.pt")["epoch"] == 2
    assert (ckpts / "best.pt").read_bytes() == (ckpts / "last.pt").read_bytes()


@pytest.mark.parametrize("key,value", [("sched.name", "plateau"),
                                       ("train.early_stop_patience", "2")])
def test_no_validation_set_refuses_what_needs_one(tmp_path, data, capsys, key, value):
    code = main(["train", "--data", str(data), "--output", str(tmp_path / "runs"),
                 "data.val_fraction=0", f"{key}={value}", "log.progress=off"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert key in err and "validation set" in err
    assert not (tmp_path / "runs").exists()


def test_plateau_follows_the_monitor(tmp_path, data):
    # val_acc is maximised: a plateau of val_acc at 1.0 (or any stall) halves the lr
    cfg = _cfg(tmp_path, data, train__epochs=4, sched__name="plateau", sched__plateau_patience=0,
               sched__plateau_factor=0.5, train__monitor="val_macro_f1", log__name="plateau")
    rows = _metrics(api.train(cfg).run_dir)
    f1 = [r["val_macro_f1"] for r in rows]
    lrs = [r["lr"] for r in rows]
    for i in range(1, len(rows) - 1):
        stalled = f1[i] <= max(f1[:i])
        assert (lrs[i + 1] < lrs[i]) == stalled, (f1, lrs)


# --------------------------------------------------------------------------- early stopping


def _early(tmp_path: Path, data: Path, name: str, **extra: Any):
    # min_delta 10: no epoch after the first ever counts as an improvement of val_loss
    return _cfg(tmp_path, data, train__epochs=10, train__monitor="val_loss",
                train__early_stop_patience=3, train__early_stop_min_delta=10.0,
                train__deterministic=True, log__name=name, **extra)


def test_early_stopping_stops_says_why_and_survives_resume(tmp_path, data, capsys):
    whole = api.train(_early(tmp_path, data, "whole"))
    err = capsys.readouterr().err
    assert whole.epochs == 4 and "stopping early after epoch 4" in err
    assert "val_loss has not improved by more than 10 for 3 epochs" in err
    assert whole.stop_reason is not None and len(_metrics(whole.run_dir)) == 4

    # killed in epoch 3: the resumed run keeps counting from its checkpoint (wait = 1)
    with pytest.raises(KeyboardInterrupt):
        api.train(_early(tmp_path, data, "split"), callbacks=[InterruptDuringEpoch(2)])
    run = tmp_path / "runs" / "split"
    assert load_checkpoint(run / "checkpoints" / "last.pt")["callbacks"]["early_stopping"][
        "wait"] == 1
    resumed = api.train(resume=run)
    assert resumed.epochs == 4
    assert [r["epoch"] for r in _metrics(run)] == [1, 2, 3, 4]

    # a run that stopped early is finished, unless the patience grows
    with pytest.raises(ImgclsError, match="stopped early at epoch 4"):
        api.train(resume=run)
    longer = api.train(resume=run, overrides={"train.early_stop_patience": 4})
    assert longer.epochs == 5


class _Counter(Callback):
    """A user callback with state: counts epochs across resumes."""

    key = "counter"

    def __init__(self) -> None:
        self.seen = 0
        self.first_batch_shape: tuple[int, ...] | None = None

    def on_first_batch(self, trainer, images, labels) -> None:
        self.first_batch_shape = tuple(images.shape)

    def on_epoch_end(self, trainer, metrics):
        self.seen += 1
        return "enough" if self.seen == 2 else None

    def state_dict(self) -> dict[str, Any]:
        return {"seen": self.seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = state["seen"]


def test_user_callbacks_stop_the_run_and_keep_their_state(tmp_path, data):
    counter = _Counter()
    result = api.train(_cfg(tmp_path, data, train__epochs=5, log__name="cb"),
                       callbacks=[counter])
    assert result.epochs == 2 and result.stop_reason == "enough"
    assert counter.first_batch_shape is not None and counter.first_batch_shape[1:] == (3, 32, 32)
    again = _Counter()
    api.train(resume=result.run_dir, callbacks=[again])
    assert again.seen == 5  # restored 2, then epochs 3, 4 and 5


# --------------------------------------------------------------------------- the record


def test_record_round_trip_and_missing_field(tmp_path):
    record = CheckpointRecord(model={"w": torch.ones(2)}, config=build_config().to_dict(),
                              classes=["x", "y"], input_size=32, mean=[0.5] * 3, std=[0.5] * 3)
    record.save(tmp_path / "r.pt")
    back = CheckpointRecord.load(tmp_path / "r.pt")
    assert back.classes == ["x", "y"] and back.mean_std == ([0.5] * 3, [0.5] * 3)
    assert not back.resumable and "optimizer" not in load_checkpoint(tmp_path / "r.pt")
    payload = record.to_payload()
    del payload["input_size"]
    save_checkpoint(payload, tmp_path / "broken.pt")
    with pytest.raises(ImgclsError, match="has no 'input_size' field") as info:
        CheckpointRecord.load(tmp_path / "broken.pt")
    assert "\n" not in str(info.value)
    with pytest.raises(ImgclsError, match="holds weights only"):
        api.train(resume=tmp_path / "r.pt")


# --------------------------------------------------------------------------- lr-find


def test_lr_find_writes_the_curve_and_no_run_folder(tmp_path, data, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "sweep"
    code = main(["lr-find", "--data", str(data), "--model", "lenet", "--batch-size", "16",
                 "--steps", "40", "--output", str(out), "log.progress=off",
                 f"data.root={tmp_path / 'cache'}"])
    text = capsys.readouterr().out
    assert code == 0 and "suggested lr" in text or "no suggestion" in text
    rows = (out / "lr_find.csv").read_text().splitlines()
    assert rows[0] == "step,lr,loss,smoothed_loss" and 10 <= len(rows) - 1 <= 40
    assert (out / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "runs").exists()

    run = api.train(_cfg(tmp_path, data, train__epochs=1, log__name="r")).run_dir
    before = sorted(p.name for p in run.iterdir())
    code = main(["lr-find", "--data", str(data), "--output", str(run)])
    err = capsys.readouterr().err
    assert code == 2 and "is a run folder" in err
    assert sorted(p.name for p in run.iterdir()) == before
