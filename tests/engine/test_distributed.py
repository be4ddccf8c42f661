"""Distributed training (torchrun + DDP, gloo on the CPU): 2-process runs in subprocesses, checked
against 1-process training and evaluation; plus the pieces (env detection, sharding, accumulation,
lr scaling) in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from imgcls import api, runtime
from imgcls.cli.train import without_nproc
from imgcls.config import build_config
from imgcls.data.loaders import shard
from imgcls.errors import ImgclsError
from imgcls.runs.checkpoint import load_checkpoint

FAST = [
    "--model", "lenet", "--batch-size", "4", "optim.lr=0.02", "sched.warmup_epochs=0",
    "log.progress=off", "log.tensorboard=false", "train.dist_timeout_min=0.5",
]
TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "LOCAL_WORLD_SIZE", "GROUP_RANK", "TORCHELASTIC_RUN_ID")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _imgcls(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imgcls", *args], env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _torchrun(args: list[str], nproc: int = 2, timeout: float = 120) -> subprocess.CompletedProcess:
    # --standalone: a local rendezvous on a free port
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(nproc), "-m", "imgcls", "train", *args]
    return subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=timeout)


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-4000:]


def _train_unbroken_and_resumed(common: list[str], runs: Path) -> subprocess.CompletedProcess:
    """Two 2-process runs of ``common``: 2 epochs unbroken, and 1 epoch then resumed to 2; their
    weights must be bit-identical. Returns the unbroken run's process."""
    unbroken = _torchrun([*common, "--name", "unbroken", "--epochs", "2"])
    _ok(unbroken)
    _ok(_torchrun([*common, "--name", "resumed", "--epochs", "1"]))
    _ok(_torchrun(["--resume", str(runs / "resumed"), "train.epochs=2"]))
    _assert_same_weights(runs / "unbroken", runs / "resumed", tol=0)
    return unbroken


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- in-process pieces


def test_detect_dist_reads_torchrun_env(monkeypatch):
    for key in TORCHRUN_ENV:
        monkeypatch.delenv(key, raising=False)
    assert runtime.detect_dist() == runtime.DistInfo(0, 0, 1)
    assert runtime.detect_dist().is_main
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = runtime.detect_dist()
    assert (info.rank, info.local_rank, info.world_size, info.is_main) == (3, 1, 4, False)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ImgclsError, match="RANK=4"):
        runtime.detect_dist()


def test_shard_splits_without_repeats():
    data = list(range(7))
    shards = [list(shard(data, 2, r)) for r in range(2)]
    assert shards == [[0, 2, 4, 6], [1, 3, 5]]
    assert sorted(sum((list(shard(data, 3, r)) for r in range(3)), [])) == data
    assert shard(data, 1, 0) is data


def test_new_keys_are_validated():
    with pytest.raises(ImgclsError, match="optim.scale_lr"):
        build_config(overrides={"optim.scale_lr": "sqrt"})
    with pytest.raises(ImgclsError, match="train.accumulate"):
        build_config(overrides={"train.accumulate": 0})
    with pytest.raises(ImgclsError, match="train.dist_timeout_min"):
        build_config(overrides={"train.dist_timeout_min": 0})
    assert build_config().model.sync_bn is False


def test_nproc_is_removed_from_the_relaunched_command():
    argv = ["train", "--nproc", "2", "--data", "x", "--nproc=3", "optim.lr=0.1"]
    assert without_nproc(argv) == ["train", "--data", "x", "optim.lr=0.1"]


def _exact(tmp_path: Path, data: Path, name: str, **extra: object):
    values = {
        "data.source": str(data), "model.name": "lenet", "transforms.preset": "none",
        "loader.shuffle": False, "sched.name": "none", "sched.warmup_epochs": 0.0,
        "train.deterministic": True, "train.epochs": 1, "log.progress": "off",
        "log.tensorboard": False, "log.output": str(tmp_path / "runs"), "log.name": name,
        "optim.lr": 0.02,
        # fp32: these runs are compared across batch shapes, which bf16 rounds differently
        "train.amp": "off",
    }
    values.update(extra)
    return build_config(overrides=values)


def _assert_same_weights(a: Path, b: Path, tol: float = 1e-5) -> None:
    wa = load_checkpoint(a / "checkpoints" / "last.pt")["model"]
    wb = load_checkpoint(b / "checkpoints" / "last.pt")["model"]
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=tol, rtol=0, msg=key)


def test_accumulation_equals_the_big_batch_and_scale_lr(tmp_path, make_image_folder):
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=8,
                             layout="train_val", size=32)
    big = api.train(_exact(tmp_path, data, "big", **{"loader.batch_size": 8}))
    acc = api.train(_exact(tmp_path, data, "acc", **{"loader.batch_size": 4,
                                                     "train.accumulate": 2}))
    _assert_same_weights(big.run_dir, acc.run_dir)
    assert load_checkpoint(acc.run_dir / "checkpoints" / "last.pt")["step"] == 3  # 6 batches / 2
    assert acc.last_metrics["train_loss"] == pytest.approx(big.last_metrics["train_loss"],
                                                           abs=1e-6)
    scaled = api.train(_exact(tmp_path, data, "scaled", **{
        "loader.batch_size": 4, "train.accumulate": 2, "optim.scale_lr": "linear"}))
    assert scaled.last_metrics["lr"] == pytest.approx(0.04)  # x world 1 x accumulate 2


# --------------------------------------------------------------------------- 2 processes


@pytest.mark.slow
def test_two_processes_train_resume_and_match_one_process(tmp_path, make_image_folder):
    # 21 validation images: an odd count, so padding the shards would change the accuracy
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=7,
                             layout="train_val", size=32)
    out = tmp_path / "runs"
    proc = _imgcls(["train", "--nproc", "2", "--data", str(data), "--output", str(out),
                    "--epochs", "1", *FAST])
    _ok(proc)
    runs = list(out.iterdir())
    assert len(runs) == 1, runs  # all ranks agreed on one timestamped name; only rank 0 wrote
    run = runs[0]
    for name in ("config.yaml", "split.json", "metrics.jsonl", "checkpoints/last.pt",
                 "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    assert proc.stderr.count("epoch 1/1") == 1  # printed by rank 0 only
    rows = _metrics(run)
    assert [r["epoch"] for r in rows] == [1]
    summary = api.evaluate_checkpoint(run / "checkpoints" / "last.pt", device="cpu")
    assert summary["n"] == 21
    assert rows[-1]["val_acc"] == pytest.approx(summary["top1"], abs=1e-12)
    assert rows[-1]["val_loss"] == pytest.approx(summary["loss"], abs=1e-6)
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["provenance"]["world_size"] == 2
    assert not any(k.startswith("module.") for k in ckpt["model"])  # the unwrapped model

    # resume in 2 processes: every rank loads last.pt
    _ok(_torchrun(["--resume", str(run), "train.epochs=2"]))
    rows = _metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2]
    summary = api.evaluate_checkpoint(run / "checkpoints" / "last.pt", device="cpu")
    assert rows[-1]["val_acc"] == pytest.approx(summary["top1"], abs=1e-12)

    # ... and the 2-process checkpoint goes on in 1 process
    result = api.train(resume=run, overrides={"train.epochs": 3})
    assert [r["epoch"] for r in _metrics(run)] == [1, 2, 3]
    assert result.run_dir == run
    assert load_checkpoint(run / "checkpoints" / "last.pt")["provenance"]["world_size"] == 1


@pytest.mark.slow
def test_two_processes_stop_early_together(tmp_path, make_image_folder):
    # Rank 0 decides and broadcasts: a rank that went on alone would hang the job until
    # train.dist_timeout_min and fail it.
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=8,
                             layout="train_val", size=32)
    runs = tmp_path / "runs"
    proc = _torchrun(["--data", str(data), "--output", str(runs), "--name", "early", *FAST,
                      "--epochs", "8", "train.monitor=val_loss", "train.early_stop_patience=2",
                      "train.early_stop_min_delta=10"])
    _ok(proc)
    assert proc.stderr.count("stopping early after epoch 3") == 1  # said once, by rank 0
    assert [r["epoch"] for r in _metrics(runs / "early")] == [1, 2, 3]
    ckpt = load_checkpoint(runs / "early" / "checkpoints" / "last.pt")
    assert ckpt["callbacks"]["early_stopping"]["stopped_epoch"] == 3


@pytest.mark.slow
def test_two_process_resume_continues_exactly(tmp_path, make_image_folder):
    # Crops and flips drawn in each rank's main process (DataLoader, no workers) from the global
    # RNG: every rank re-seeds per epoch, so epoch 2 after a resume draws what it draws unbroken.
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=8,
                             layout="train_val", size=32)
    runs = tmp_path / "runs"
    common = ["--data", str(data), "--output", str(runs), *FAST, "sched.name=none",
              "transforms.preset=cifar", "data.loader=dataloader", "loader.num_workers=0",
              "train.deterministic=true"]
    _train_unbroken_and_resumed(common, runs)
    rows = _metrics(runs / "unbroken"), _metrics(runs / "resumed")
    assert [r["train_loss"] for r in rows[0]] == [r["train_loss"] for r in rows[1]]


@pytest.mark.slow
def test_two_processes_mix_batches_and_resume_exactly(tmp_path, make_image_folder):
    # MixUp/CutMix draw from each rank's global RNG (re-seeded per epoch and rank), random
    # erasing from the memory loader's per-rank stream: a resumed epoch draws what it did.
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=8,
                             layout="train_val", size=32)
    runs = tmp_path / "runs"
    common = ["--data", str(data), "--output", str(runs), *FAST, "sched.name=none",
              "data.loader=memory", "train.deterministic=true", "transforms.mixup=0.4",
              "transforms.cutmix=1.0", "transforms.random_erasing=0.5",
              "optim.class_weights=auto"]
    _train_unbroken_and_resumed(common, runs)


@pytest.mark.slow
def test_two_processes_equal_one_process_with_twice_the_batch(tmp_path, make_image_folder):
    # 24 training images, batch 4 per process: DistributedSampler (no shuffle) gives rank r the
    # indices r, r+2, ..., so step k's two micro-batches together are the 1-process batch k of 8;
    # DDP averages the two equal-sized batches' mean-loss gradients: the big batch's gradient.
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=8,
                             layout="train_val", size=32)
    one = api.train(_exact(tmp_path, data, "one", **{"loader.batch_size": 8}))

    def common(name: str, batch: int) -> list[str]:
        return [
            "--data", str(data), "--model", "lenet", "--batch-size", str(batch), "--output",
            str(tmp_path / "runs"), "--name", name, "--lr", "0.02", "transforms.preset=none",
            "loader.shuffle=false", "sched.name=none", "sched.warmup_epochs=0",
            "log.progress=off", "log.tensorboard=false", "train.deterministic=true",
            "train.epochs=1", "train.amp=off",
        ]

    _ok(_torchrun(common("two", 4)))
    two = tmp_path / "runs" / "two"
    _assert_same_weights(one.run_dir, two)
    row1, row2 = _metrics(one.run_dir)[-1], _metrics(two)[-1]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "val_top5"):
        assert row2[key] == pytest.approx(row1[key], abs=1e-5), key
    assert row2["step"] == row1["step"] == 3

    # 2 processes x batch 2 x accumulate 2 (no_sync on the first micro-batch): rank 0 takes
    # [0, 2] then [4, 6], rank 1 [1, 3] then [5, 7]: one step over the same 8 images again
    _ok(_torchrun(common("acc", 2) + ["train.accumulate=2"]))
    _assert_same_weights(one.run_dir, tmp_path / "runs" / "acc")
    assert _metrics(tmp_path / "runs" / "acc")[-1]["step"] == 3


@pytest.mark.slow
def test_one_failing_rank_ends_the_job_with_its_message(tmp_path, make_image_folder):
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=7,
                             layout="train_val", size=32)
    # validation index 1 (sorted: a_000, a_001, ...) is in rank 1's shard only
    bad = data / "val" / "a" / "a_001.png"
    assert bad.exists()
    bad.write_bytes(b"this is not an image")
    start = time.perf_counter()
    proc = _torchrun(["--data", str(data), "--output", str(tmp_path / "runs"), "--epochs", "2",
                      *FAST], timeout=120)
    assert proc.returncode != 0
    assert "imgcls: error: [rank 1] cannot read image" in proc.stderr
    assert "a_001.png" in proc.stderr
    assert time.perf_counter() - start < 90


@pytest.mark.slow
def test_two_processes_share_one_photo_cache_and_resume_exactly(tmp_path, make_image_folder):
    # Rank 0 builds the photo cache while the other waits at a barrier, then both read it; the
    # crops, flips and policy ops are drawn per rank and epoch, so a resumed epoch is unbroken.
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=8,
                             layout="train_val", size=48)
    runs = tmp_path / "runs"
    common = ["--data", str(data), "--output", str(runs), *FAST, "sched.name=none",
              "data.loader=memory", f"data.root={tmp_path / 'cache'}",
              "transforms.image_size=32", "transforms.random_resized_crop=true",
              "transforms.center_crop=true", "transforms.hflip=0.5",
              "transforms.auto_augment=trivialaugment", "train.deterministic=true"]
    unbroken = _train_unbroken_and_resumed(common, runs)
    assert unbroken.stderr.count("decoding 24 photos once") == 1  # rank 0 alone built it
    assert "photo cache" in unbroken.stderr
    assert len(list((tmp_path / "cache" / ".imgcls-cache").glob("photos-*"))) == 1


@pytest.mark.slow
def test_two_processes_gather_multilabel_scores_for_exact_metrics(tmp_path, make_label_csv):
    # a label CSV: each rank scores its share of the validation images; the sigmoid scores are
    # gathered, so mAP, F1 and the thresholds are those of the whole set, as in one process
    data = make_label_csv(tmp_path / "d", n=48, size=32)
    extra = {"data.val_fraction": 0.25, "loader.batch_size": 8}
    one = api.train(_exact(tmp_path, data, "one", **extra))

    _ok(_torchrun([
        "--data", str(data), "--model", "lenet", "--batch-size", "4", "--output",
        str(tmp_path / "runs"), "--name", "two", "--lr", "0.02", "transforms.preset=none",
        "loader.shuffle=false", "sched.name=none", "sched.warmup_epochs=0", "log.progress=off",
        "log.tensorboard=false", "train.deterministic=true", "train.epochs=1", "train.amp=off",
        "data.val_fraction=0.25",
    ]))
    two = tmp_path / "runs" / "two"
    _assert_same_weights(one.run_dir, two)
    row1, row2 = _metrics(one.run_dir)[-1], _metrics(two)[-1]
    for key in ("val_loss", "val_acc", "val_map", "val_micro_f1", "val_macro_f1",
                "val_hamming_loss"):
        assert row2[key] == pytest.approx(row1[key], abs=1e-5), key
    t1 = load_checkpoint(one.run_dir / "checkpoints" / "last.pt")["thresholds"]
    t2 = load_checkpoint(two / "checkpoints" / "last.pt")["thresholds"]
    assert t2 == pytest.approx(t1, abs=1e-5)
