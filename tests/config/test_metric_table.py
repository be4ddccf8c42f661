"""The one metrics table (``imgcls.metric_table``): what a run logs matches it, and everything that
lists metrics (train.monitor's choices, monitors, the console line, TensorBoard, summaries, the
report and the curves) follows it, a new entry included."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from imgcls import api
from imgcls.config import KEYS, build_config
from imgcls.engine.callbacks import epoch_line
from imgcls.errors import ImgclsError
from imgcls.experiments.plan import Member
from imgcls.experiments.status import FINISHED, RunStatus
from imgcls.experiments.summary import run_row
from imgcls.metric_table import (
    METRICS,
    MONITORS,
    ROW_FIELDS,
    MetricSpec,
    get_monitor,
    monitor_names,
    names,
    tb_tags,
)
from imgcls.report.build import _compare_row
from imgcls.runs.files import PANELS
from imgcls.tracking import RunLogger


@pytest.mark.parametrize("multilabel", [False, True])
def test_a_tiny_run_logs_exactly_the_table(tmp_path, make_image_folder, make_label_csv,
                                           multilabel):
    # one label per image, or several (a label CSV): each logs the table's metrics of its kind
    data = (make_label_csv(tmp_path / "d", n=24, size=32) if multilabel else
            make_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=8, size=32))
    cfg = build_config(overrides={
        "data.source": str(data), "log.output": str(tmp_path / "runs"), "log.name": "run",
        "model.name": "lenet", "loader.batch_size": 8, "train.epochs": 1,
        "sched.warmup_epochs": 0.0, "log.progress": "off"})
    run = api.train(cfg).run_dir
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = set(rows[-1]) - set(ROW_FIELDS)
    expected = set(names(multilabel=multilabel))
    assert logged == expected, (logged ^ expected)
    assert expected != set(METRICS)
    for name in monitor_names():
        if name in expected:
            assert isinstance(rows[-1][name], float), name
    # TensorBoard gets one scalar per tagged metric, under the table's tag
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    scalars = {t for t in events.Tags()["scalars"] if not t.startswith("val_class_")}
    assert scalars == {tag for name, tag in tb_tags().items() if name in expected}


def test_train_monitor_choices_are_the_monitorable_entries():
    assert typing.get_args(KEYS["train.monitor"].annotation) == monitor_names()
    assert typing.get_args(KEYS["sched.plateau_metric"].annotation) == ("monitor", *monitor_names())
    for name in monitor_names():
        assert build_config(overrides={"train.monitor": name}).train.monitor == name
    for name in set(METRICS) - set(monitor_names()):  # logged, but not something to watch
        with pytest.raises(ImgclsError, match="train.monitor") as caught:
            build_config(overrides={"train.monitor": name})
        assert "\n" not in str(caught.value)


def test_monitors_take_their_direction_from_the_table():
    assert tuple(MONITORS) == monitor_names()
    for name in monitor_names():
        assert get_monitor(name).mode == METRICS[name].direction == MONITORS[name].mode
    with pytest.raises(ImgclsError, match="choose one of"):
        get_monitor("train_loss")


def test_every_panel_a_metric_names_is_drawn():
    titles = {title for title, _ in PANELS}
    assert {spec.panel for spec in METRICS.values() if spec.panel} <= titles


def test_a_new_entry_reaches_every_consumer(monkeypatch, tmp_path: Path):
    fake = MetricSpec("val_fake", "min", "validation fake", "val/fake", monitor=True,
                      console=True, summary=True, panel="loss")
    monkeypatch.setitem(METRICS, "val_fake", fake)
    assert "val_fake" in monitor_names() and get_monitor("val_fake").mode == "min"
    assert names(validation=True)[-1] == "val_fake" and "val_fake" in names(panel="loss")

    rows = [{"epoch": e, "step": e, "train_loss": 1.0, "train_acc": 0.5, "lr": 0.1,
             "epoch_time_s": 1.0, "val_fake": v} for e, v in ((1, 0.3), (2, 0.1), (3, 0.2))]
    assert "val_fake 0.2000" in epoch_line(rows[-1], 3)

    logger = RunLogger(tmp_path, tensorboard=True)
    logger.log_epoch(rows[0])
    logger.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert events.Scalars("val/fake")[0].value == pytest.approx(0.3)

    # the experiment summary and the runs-compared page: final and best (here the lowest)
    status = RunStatus(Member(0, "seed-0"), tmp_path, FINISHED, epoch=3, epochs=3, rows=rows)
    row = run_row(status, "val_fake", "min")
    assert row["best_epoch"] == 2 and row["best_val_fake"] == pytest.approx(0.1)
    assert row["final_val_fake"] == pytest.approx(0.2)
    compared = _compare_row("run", str(tmp_path), rows)
    assert compared["final_val_fake"] == pytest.approx(0.2)
    assert compared["best_val_fake"] == pytest.approx(0.1)
