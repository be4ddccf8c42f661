"""Smoke tests of the scripts in benchmarks/: each runs (``--quick``) on a tiny generated data set
and ends with one JSON line of results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"


def run_benchmark(script: str, *args: str | Path, timeout: float = 300) -> dict[str, Any]:
    """Run ``benchmarks/<script>`` with ``args`` under this interpreter; assert it exits 0 and
    return the JSON object on the last line of its stdout."""
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *map(str, args)],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    lines = proc.stdout.strip().splitlines()
    assert lines, f"{script} printed nothing; stderr:\n{proc.stderr}"
    try:
        result = json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        raise AssertionError(f"{script}'s last line is not JSON: {lines[-1]!r}") from exc
    assert isinstance(result, dict), f"{script}'s last line is not a JSON object: {lines[-1]!r}"
    return result


def test_cpu_precision_quick() -> None:
    result = run_benchmark("cpu_precision.py", "--models", "lenet", "--size", "32",
                           "--batch-size", "8", "--steps", "2", "--warmup", "1", "--repeats", "2")
    rows = result["results"]["lenet"]
    assert set(rows) == {"fp32", "bf16"} and rows["fp32"]["vs_fp32"] == 1.0
    assert all(row["steps_s"] > 0 and row["img_s"] == pytest.approx(row["steps_s"] * 8, rel=0.01)
               for row in rows.values())
    assert result["native_bf16"] in ("", "AMX-BF16", "AVX512-BF16")


def test_pipeline_quick(tmp_path: Path, make_image_folder) -> None:
    # 2 classes x 8 images of 32 x 32 in a train/ folder: fewer images than one batch of 64.
    data = make_image_folder(tmp_path / "data", per_class=8, layout="train_val", size=32)
    result = run_benchmark("pipeline.py", "--data", data, "--quick", "--device", "cpu")
    for key in ("tutorial_img_s", "imgcls_img_s", "ratio"):
        assert result[key] > 0, result
    assert 0 < result["images"] <= 16
    assert result["decode_s"] > 0 and result["cache_hit_s"] > 0


def test_photo_pipeline_quick(tmp_path: Path, make_image_folder) -> None:
    data = make_image_folder(tmp_path / "data", per_class=6, layout="train_val", size=48)
    result = run_benchmark("photo_pipeline.py", "--data", data, "--size", "32",
                           "--batch-size", "4", "--repeats", "1", "--workers", "0")
    assert result["photo_img_s"] > 0 and result["dataloader_img_s"] > 0
    assert result["photos"] == 12 and result["build_s"] > 0 and result["cache_mb"] > 0


def test_train_throughput_quick(tmp_path: Path, make_image_folder) -> None:
    # 2 classes x 8 images of 32 x 32, 8 of them used: every batch is the whole 8 (one batch
    # shape, so no kernel set-up inside the timed steps), 2 timed steps, both models. One thread:
    # two OpenMP threads on a 2-core machine that runs anything else crawl (10x slower).
    data = make_image_folder(tmp_path / "data", per_class=8, layout="train_val", size=32)
    result = run_benchmark(
        "train_throughput.py", "--data", data, "--quick", "--device", "cpu", "--limit", "8",
        "--batch-size", "8", "--steps", "2", "--warmup", "1", "--repeats", "1",
        "--cache-dir", tmp_path / "cache", "--threads", "1",
    )
    for model in ("simple_v3", "fastnet"):
        r = result[model]
        for key in ("imgcls_img_s", "tutorial_img_s", "ratio", "gflops", "roof_gflops",
                    "utilisation", "mflop_per_img"):
            assert r[key] > 0, (model, key, r)
        assert r["roof_gflops"] == result["roof_gflops"]
    # one training step of fastnet costs about 3 x its 0.24 GFLOP forward
    assert 500 < result["fastnet"]["mflop_per_img"] < 1000, result["fastnet"]
    assert result["roof_gflops"] > 0 and result["images"] == 8
    assert result["decode_s"] > 0 and result["device"] == "cpu"
    for loop in ("imgcls", "tutorial"):  # where the CPU time went, from getrusage
        cpu = result["fastnet"]["cpu"][loop]
        assert cpu["user_s"] > 0 and cpu["sys_s"] >= 0 and 0 <= cpu["sys_share"] < 1, cpu
        assert cpu["faults_per_s"] >= 0 and cpu["faults_per_step"] >= 0, cpu
    assert result["max_rss_mb"] > 0 and result["malloc"] == "default"


def test_train_throughput_compares_allocators(tmp_path: Path, make_image_folder) -> None:
    # One round of the default allocator and of mallopt, each in its own process: 2 steps of
    # lenet on 8 images.
    data = make_image_folder(tmp_path / "data", per_class=4, layout="train_val", size=32)
    result = run_benchmark(
        "train_throughput.py", "--data", data, "--models", "lenet", "--limit", "8",
        "--batch-size", "8", "--steps", "2", "--warmup", "1", "--threads", "1",
        "--cache-dir", tmp_path / "cache", "--compare-malloc", "1",
        "--malloc-variants", "default,mallopt",
    )
    assert result["rounds"] == 1
    for variant in ("default", "mallopt"):
        r = result["compare_malloc"][variant]["lenet"]
        assert r["img_s"] > 0 and r["user_s"] > 0 and r["max_rss_mb"] > 0, r
        assert len(r["img_s_runs"]) == 1
    assert result["compare_malloc"]["default"]["lenet"]["img_s_vs_default"] == 1.0
    assert result["compare_malloc"]["mallopt"]["lenet"]["img_per_cpu_s_vs_default"] > 0


def test_time_to_accuracy_quick(tmp_path: Path, make_image_folder) -> None:
    # 2 classes x 10 learnable images: one epoch of each recipe on a stratified 18 / 2 split.
    data = make_image_folder(tmp_path / "data", per_class=10, size=32)
    result = run_benchmark(
        "time_to_accuracy.py", "--data", data, "--quick", "--epochs", "1",
        "--output", tmp_path / "runs", "--cache-dir", tmp_path / "cache",
    )
    assert result["device"] == "cpu"
    for recipe in ("fast", "simple_v3_seed"):
        r = result[recipe]
        for pct in ("85", "88", "90", "92", "94"):
            hit = r[pct]
            assert set(hit) == {"seconds", "epochs"}, hit
            assert (hit["seconds"] is None) == (hit["epochs"] is None), hit
            if hit["seconds"] is not None:
                assert hit["seconds"] > 0 and hit["epochs"] == 1, hit
        assert 0 <= r["best_val_acc"] <= 1 and 0 <= r["final_val_acc"] <= 1, r
        assert r["total_seconds"] > 0 and r["epochs_run"] == 1, r
        assert r["train_images"] == 18 and r["val_images"] == 2, r
        assert r["images_per_s"] == pytest.approx(18 / r["total_seconds"], abs=0.06), r
        assert r["images_trained"] == 18 and r["cpu"]["user_s"] > 0, r
        assert 0 <= r["cpu"]["sys_share"] < 1 and r["cpu"]["img_per_cpu_s"] > 0, r
        assert (Path(r["run_dir"]) / "metrics.jsonl").is_file()


def test_time_to_accuracy_variants_are_an_ablation(tmp_path: Path, make_image_folder) -> None:
    # fast.yaml and two variants of it, one epoch each, reported against fast.yaml
    data = make_image_folder(tmp_path / "data", per_class=10, size=32)
    result = run_benchmark(
        "time_to_accuracy.py", "--data", data, "--quick", "--recipes", "fast",
        "--variant", "lookahead: train.lookahead_every=2",
        "--variant", "whiten: train.whiten_bias_epochs=1 transforms.crop_padding_mode=constant",
        "--output", tmp_path / "runs", "--cache-dir", tmp_path / "cache",
    )
    assert set(result["ablation"]) == {"fast+lookahead", "fast+whiten"}
    for name, changes in (("fast+lookahead", {"lookahead_every: 2"}),
                          ("fast+whiten", {"whiten_bias_epochs: 1",
                                           "crop_padding_mode: constant"})):
        r = result[name]
        assert r["epochs_run"] == 1 and r["train_images"] == 18, r
        saved = (Path(r["run_dir"]) / "config.yaml").read_text()
        assert all(change in saved for change in changes), saved
        row = result["ablation"][name]
        assert row["total_seconds_ratio"] > 0
        assert row["final_val_acc_points"] == round(
            100 * (r["final_val_acc"] - result["fast"]["final_val_acc"]), 2)
        assert set(r["final_tta"]) == {"none", "flip", "flip_translate"}
    saved = (Path(result["fast"]["run_dir"]) / "config.yaml").read_text()
    assert "lookahead_every: 5" in saved and "crop_padding_mode: reflect" in saved  # fast.yaml's
    bad = subprocess.run([sys.executable, str(BENCHMARKS / "time_to_accuracy.py"), "--recipes",
                          "fast", "--variant", "no colon here"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "--variant 'no colon here'" in bad.stderr, bad.stderr


def test_time_to_accuracy_with_the_airbench94_peer(tmp_path: Path, make_image_folder) -> None:
    # One epoch of fast.yaml and of airbench94 (batch 6: 3 steps of its 18 training images) on
    # the same stratified 18 / 2 split, side by side in one invocation.
    pytest.importorskip("airbench")
    data = make_image_folder(tmp_path / "data", per_class=10, size=32)
    result = run_benchmark(
        "time_to_accuracy.py", "--data", data, "--quick", "--recipes", "fast",
        "--peer", "airbench94", "--peer-batch-size", "6", "--set", "train.tta=flip",
        "--output", tmp_path / "runs", "--cache-dir", tmp_path / "cache",
    )
    peer, ours = result["airbench94"], result["fast"]
    assert peer["train_images"] == 18 and peer["val_images"] == 2, peer
    assert peer["epochs_run"] == 1 and peer["epochs"] == 1 and peer["batch_size"] == 6
    assert peer["same_split_as"] == {"fast": True}
    assert peer["scored_with_tta"] == "flip" and peer["tta_level"] == 1  # the recipe's train.tta
    row = peer["rows"][0]
    assert 0 <= row["val_acc"] <= 1 and 0 <= row["val_acc_tta"] <= 1
    assert 0 < row["train_s"] <= row["elapsed_s"] <= peer["total_seconds"]
    for side in (peer["final"], ours["final_tta"]):
        assert set(side) == {"none", "flip", "flip_translate"}
        assert all(0 <= v <= 1 for v in side.values()), side
    assert ours["rows"][0]["epoch"] == 1
    assert ours["images_trained"] == 18  # fast.yaml's drop_last keeps its one (partial) batch
    ratios = result["ratios"]["fast"]
    assert {"seconds_to_85", "seconds_to_88", "seconds_to_90", "total_seconds",
            "final_acc_none", "final_acc_flip_translate"} <= set(ratios)
    assert ratios["total_seconds"] > 0
    assert peer["images_per_s"] == pytest.approx(18 / peer["total_seconds"], abs=0.06), peer
    assert peer["images_trained"] == 18 and peer["cpu"]["user_s"] > 0, peer  # 3 steps of 6
    assert peer["cpu"]["faults_per_step"] > 0, peer
    assert ratios["images_per_s"] == pytest.approx(
        ours["images_per_s"] / peer["images_per_s"], rel=0.01)
    assert (tmp_path / "runs" / "airbench94-data" / "train.pt").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the script runs for minutes")
def test_gpu_check_says_no_cuda_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and "no CUDA" in lines[0], proc.stdout
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.slow
def test_compare_revisions_quick(tmp_path: Path, make_image_folder) -> None:
    # HEAD against this working tree: 2 classes x 10 images, one epoch each, one repeat.
    data = make_image_folder(tmp_path / "data", per_class=10, size=32)
    result = run_benchmark(
        "compare_revisions.py", "--base", "HEAD", "--data", data, "--limit", "20",
        "--config", "configs/lenet_seed.yaml", "--epochs", "1", "--repeats", "1",
        "--set", "loader.batch_size=8", "log.tensorboard=false",
    )
    assert 0 < result["images"] <= 20 and result["base"] == "HEAD"
    for tree in ("base", "this"):
        assert result["median"][tree]["epoch_s"] > 0 and result["median"][tree]["wall_s"] > 0
    assert result["ratio_this_over_base"]["wall_s"] > 0


@pytest.mark.slow
def test_imbalance_quick(tmp_path: Path) -> None:
    # The bundled digits, 10:1 imbalanced: one seed, one epoch of each of the three ways.
    result = run_benchmark("imbalance.py", "--quick", "--output", tmp_path, "--threads", "1")
    assert set(result["ways"]) == {"none", "class_weights", "balanced_sampler"}
    for way in result["ways"].values():
        for key in ("macro_f1", "balanced_acc", "minority_recall", "majority_recall",
                    "accuracy"):
            assert 0 <= way[key] <= 1, (key, way)
        assert len(way["per_seed"]) == 1 and way["seconds"] > 0
    counts = result["train_counts"]
    assert min(counts[:5]) > 8 * max(counts[5:]) and result["epochs"] == 1
    assert (tmp_path / "data" / "val" / "9").is_dir()


@pytest.mark.slow
def test_kill_soak_quick() -> None:
    # four SIGKILLs (start-up, validation, around a last.pt rename, after the last epoch), two
    # pairs of writers of one run folder, one SIGKILL of `imgcls tune` inside a trial
    result = run_benchmark("kill_soak.py", "--kills", "4", "--epochs", "3", "--concurrent", "2",
                           "--tune-kills", "1", timeout=900)
    assert result["kills"] == 4
    assert result["resumable"] == result["segments"] >= 5
    assert result["steps_lost_max"] <= result["checkpoint_interval"]
    assert result["consistent"] == result["checks"] > 0
    assert result["temp_files_left"] == 0
    assert result["runs_equal"] == result["runs"] >= 1
    assert result["concurrent_good"] == result["concurrent_rounds"] == 2
    assert result["tune_code"] == 0 and result["tune_complete"] == 2
    assert result["tune_running"] == 0 and result["tune_rows_once"]
