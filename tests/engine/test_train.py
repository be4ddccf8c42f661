"""The training job end to end through the Python API: learning, resume, evaluate, run files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import assert_same_weights, interrupt_and_resume
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from imgcls import api
from imgcls.config import build_config
from imgcls.runs.checkpoint import load_checkpoint

FAST = {
    "model.name": "lenet",
    "loader.batch_size": 16,
    "optim.lr": 0.02,
    "sched.warmup_epochs": 0.0,
    "log.progress": "off",
}


def _cfg(tmp_path: Path, source: Path, **overrides: object):
    values = {**FAST, "data.source": str(source), "log.output": str(tmp_path / "runs")}
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    return build_config(overrides=values)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_and_run_folder_is_complete(tmp_path, make_image_folder):
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=30, size=32)
    result = api.train(_cfg(tmp_path, data, train__epochs=6, log__name="run", log__graph=True))
    run = result.run_dir
    assert run == tmp_path / "runs" / "run"
    rows = _metrics(run)
    assert [r["epoch"] for r in rows] == list(range(1, 7))
    for row in rows:
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "lr",
                    "epoch_time_s"):
            assert key in row
        for key in ("train_acc", "val_acc", "val_top5"):
            assert 0.0 <= row[key] <= 1.0
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] * 0.7
    assert rows[-1]["train_acc"] > 0.6
    assert result.best_metric == max(r["val_acc"] for r in rows)
    for name in ("config.yaml", "split.json", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    # config.yaml is the resolved config: it rebuilds the same Config
    from imgcls.config import load_yaml
    assert build_config(load_yaml(run / "config.yaml")) == _cfg(
        tmp_path, data, train__epochs=6, log__name="run", log__graph=True
    )
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["epoch"] == 6 and ckpt["classes"] == ["a", "b", "c"]
    assert ckpt["input_size"] == 32 and len(ckpt["mean"]) == 3
    for key in ("model", "optimizer", "scheduler", "step", "best_metric", "config", "rng"):
        assert key in ckpt

    # TensorBoard's own reader finds the scalars, the image grid and the graph.
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    for tag in ("train/loss", "train/acc", "val/loss", "val/acc", "val/top5", "lr"):
        assert tag in tags["scalars"], tag
        assert [e.step for e in events.Scalars(tag)] == list(range(1, 7))
    assert events.Scalars("val/acc")[-1].value == pytest.approx(rows[-1]["val_acc"])
    assert "train/batch" in tags["images"]
    assert tags["graph"] is True


def test_evaluate_reproduces_val_acc_of_best_epoch(tmp_path, make_image_folder):
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=20)
    result = api.train(_cfg(tmp_path, data, train__epochs=3, log__name="run"))
    best = load_checkpoint(result.run_dir / "checkpoints" / "best.pt")
    rows = {r["epoch"]: r for r in _metrics(result.run_dir)}
    summary = api.evaluate_checkpoint(result.run_dir / "checkpoints" / "best.pt")
    assert summary["top1"] == rows[best["epoch"]]["val_acc"]
    assert summary["loss"] == pytest.approx(rows[best["epoch"]]["val_loss"], rel=1e-5)
    assert summary["n"] == len(json.loads((result.run_dir / "split.json").read_text())["val"])
    assert set(summary["per_class"]) == {"a", "b", "c"}
    out = Path(summary["output"])
    assert (out / "confusion_matrix.png").stat().st_size > 1000
    lines = (out / "confusion_matrix.csv").read_text().splitlines()
    assert len(lines) == 4
    assert sum(int(v) for line in lines[1:] for v in line.split(",")[1:]) == summary["n"]


@pytest.mark.slow
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, make_image_folder):
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=24, size=32)
    common = dict(train__epochs=4, train__deterministic=True, model__name="simple_v3",
                  sched__name="cosine", sched__warmup_epochs=1.0)
    whole = api.train(_cfg(tmp_path, data, log__name="whole", **common))

    # Stop the second run in the middle of epoch 3, as Ctrl-C would, then resume it.
    run = interrupt_and_resume(_cfg(tmp_path, data, log__name="split", **common), 2).run_dir
    assert_same_weights(whole.run_dir, run)
    assert [r["epoch"] for r in _metrics(run)] == [1, 2, 3, 4]
    assert _metrics(run)[-1]["val_acc"] == _metrics(whole.run_dir)[-1]["val_acc"]


def test_resume_can_extend_epochs_and_refuses_finished_run(tmp_path, make_image_folder):
    from imgcls.errors import ImgclsError

    data = make_image_folder(tmp_path / "imgs", per_class=10)
    result = api.train(_cfg(tmp_path, data, train__epochs=1, log__name="r"))
    with pytest.raises(ImgclsError, match="already finished epoch 1"):
        api.train(resume=result.run_dir)
    split_before = (result.run_dir / "split.json").read_text()
    more = api.train(resume=result.run_dir, overrides={"train.epochs": 2})
    assert more.epochs == 2
    assert [r["epoch"] for r in _metrics(result.run_dir)] == [1, 2]
    assert (result.run_dir / "split.json").read_text() == split_before  # reused, not redrawn


def test_cifar_pickle_folder_and_test_split(tmp_path, make_cifar_batches):
    folder = make_cifar_batches(tmp_path / "cifar", n_train=120, n_test=30)
    result = api.train(_cfg(tmp_path, folder, train__epochs=1, log__name="c"))
    split = json.loads((result.run_dir / "split.json").read_text())
    assert len(split["train"]) + len(split["val"]) == 120
    summary = api.evaluate_checkpoint(result.run_dir / "checkpoints" / "last.pt", split="test")
    assert summary["n"] == 30
    assert summary["split"] == "test"


def test_python_api_takes_any_dataset(tmp_path):
    class Colours(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 40

        def __getitem__(self, i: int):
            label = i % 2
            image = torch.full((3, 32, 32), 200 if label else 30, dtype=torch.uint8)
            return image, label

    cfg = build_config(overrides={**FAST, "log.output": str(tmp_path), "train.epochs": 2,
                                  "log.name": "ds"})
    result = api.train(cfg, train_dataset=Colours(), classes=["dark", "light"])
    ckpt = load_checkpoint(result.run_dir / "checkpoints" / "best.pt")
    assert ckpt["classes"] == ["dark", "light"]
    assert result.best_metric is not None
    # a separate validation dataset: its own indices in split.json, after the training ones
    both = api.train(build_config(overrides={**FAST, "log.output": str(tmp_path),
                                             "train.epochs": 1, "log.name": "both"}),
                     train_dataset=Colours(), val_dataset=Colours(), classes=["dark", "light"])
    split = json.loads((both.run_dir / "split.json").read_text())
    assert split["val"] == list(range(40, 80)) and split["train"] == list(range(40))
    assert both.last_metrics["val_acc"] is not None


def test_max_minutes_stops_after_the_epoch_and_resume_continues(tmp_path, make_image_folder):
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=6, size=32)
    cfg = _cfg(tmp_path, data, train__epochs=3, train__max_minutes=1e-6, log__name="timed")
    result = api.train(cfg)
    assert result.epochs == 1
    rows = _metrics(result.run_dir)
    assert len(rows) == 1 and rows[0]["elapsed_s"] >= rows[0]["epoch_time_s"] > 0
    resumed = api.train(resume=result.run_dir, overrides={"train.max_minutes": 0})
    assert resumed.epochs == 3 and len(_metrics(result.run_dir)) == 3
