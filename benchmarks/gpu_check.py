"""The Python half of ``benchmarks/gpu_check.sh``: imgcls's DDP path on one GPU, and the summary.

    python benchmarks/gpu_check.py ddp CONFIG [KEY=VALUE ...]   # under torchrun --nproc_per_node 1
    python benchmarks/gpu_check.py summary OUT WORK              # reads the runs, prints, saves

``ddp``: ``imgcls train`` treats a torchrun job of one process as a plain process (no process
group, no DistributedDataParallel, no SyncBatchNorm: ``runtime.DistInfo.distributed`` is
``world_size > 1``), so on a machine with one GPU the distributed path never runs. This joins an
NCCL process group of one rank itself, then runs ``api.train`` with ``runtime.detect_dist``
answering "distributed, rank 0 of 1": imgcls then takes the group as the caller's, wraps the
model in DDP (``device_ids=[0]``, NCCL gradient all-reduce of every bucket), converts BatchNorm
with ``model.sync_bn=true`` and reduces its metrics, as each rank of a larger job does. (With
one rank SyncBatchNorm computes plain batch statistics: its cross-GPU sync needs two GPUs.)

``summary``: one JSON (``OUT/summary.json``) and a printed table of what the shell script ran:
fast.yaml against airbench94, bf16 against fp32, the DDP wrapper's overhead, sync_bn.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import torch


def ddp(config: str, overrides: list[str]) -> None:
    """``imgcls train --config CONFIG KEY=VALUE ...`` through imgcls's one-rank DDP path."""
    import torch.distributed as dist

    from imgcls import api, runtime
    from imgcls.config import build_config, load_yaml, parse_override

    class OneRank(runtime.DistInfo):
        @property
        def distributed(self) -> bool:  # what a rank of a larger job sees
            return True

    info = OneRank(rank=0, local_rank=0, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    if info.world_size != 1:
        raise SystemExit("gpu_check.py ddp is for one process (torchrun --nproc_per_node 1)")
    cfg = build_config(load_yaml(config), dict(parse_override(o) for o in overrides))
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    try:
        with mock.patch.object(runtime, "detect_dist", lambda: info):
            result = api.train(cfg)
        wrapped = (result.run_dir / "metrics.jsonl").is_file()
        print(f"ddp: backend {dist.get_backend()}, run {result.run_dir}, metrics {wrapped}")
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- summary


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.open() if line.strip()]


def _img_s(rows: list[dict[str, Any]], epochs: range) -> float | None:
    """Median training images/s over ``epochs`` (1-based; the first pays kernel selection)."""
    rates = [r["train_images_per_s"] for r in rows if r.get("epoch") in epochs
             and r.get("train_images_per_s")]
    return round(statistics.median(rates), 1) if rates else None


def _run(work: Path, name: str, out: Path) -> dict[str, Any]:
    rows = _rows(work / "runs" / name)
    if rows:  # the figures travel with the results; checkpoints stay in WORK
        (out / "runs" / name).mkdir(parents=True, exist_ok=True)
        shutil.copy(work / "runs" / name / "metrics.jsonl", out / "runs" / name)
    accs = [r["val_acc"] for r in rows if r.get("val_acc") is not None]
    return {"epochs": len(rows), "final_val_acc": accs[-1] if accs else None,
            "best_val_acc": max(accs) if accs else None,
            "img_s_epochs_2_3": _img_s(rows, range(2, 4)),
            "img_s_epochs_2_on": _img_s(rows, range(2, 10**6)),
            "seconds": round(rows[-1]["elapsed_s"], 1) if rows else None}


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def summary(out: Path, work: Path) -> dict[str, Any]:
    steps = {}
    if (out / "steps.tsv").is_file():
        for line in (out / "steps.tsv").read_text().splitlines():
            name, rc, seconds = line.split("\t")
            steps[name] = {"rc": int(rc), "seconds": int(seconds)}
    tta_json = out / "time_to_accuracy.json"
    tta: dict[str, Any] = {}
    if tta_json.is_file() and tta_json.read_text().strip():
        try:
            tta = json.loads(tta_json.read_text().strip().splitlines()[-1])
        except json.JSONDecodeError:
            tta = {}
    runs = {name: _run(work, name, out) for name in ("bf16", "fp32", "ddp", "ddp_sync_bn")}
    bf16, fp32, ddp_run = runs["bf16"], runs["fp32"], runs["ddp"]
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "steps": steps,
        "time_to_accuracy": {side: {k: tta[side].get(k) for k in (
            "85", "88", "90", "final_val_acc", "total_seconds", "final_tta", "final")
            if k in tta[side]} for side in ("fast", "airbench94") if side in tta},
        "ratios_fast_over_airbench94": tta.get("ratios", {}).get("fast"),
        "runs": runs,
        "bf16_over_fp32_img_s": _ratio(bf16["img_s_epochs_2_on"], fp32["img_s_epochs_2_on"]),
        "bf16_minus_fp32_val_acc": (round(bf16["final_val_acc"] - fp32["final_val_acc"], 4)
                                    if bf16["final_val_acc"] is not None
                                    and fp32["final_val_acc"] is not None else None),
        # the same recipe, epochs 2-3: DDP-wrapped (one rank, NCCL) against the plain process
        "ddp_over_plain_img_s": _ratio(ddp_run["img_s_epochs_2_3"], bf16["img_s_epochs_2_3"]),
        "sync_bn_over_ddp_img_s": _ratio(runs["ddp_sync_bn"]["img_s_epochs_2_3"],
                                         ddp_run["img_s_epochs_2_3"]),
    }
    (out / "summary.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def print_summary(s: dict[str, Any]) -> None:
    print(f"\n== gpu_check summary: {s['device']}, torch {s['torch']}, CUDA {s['cuda']}")
    for name, st in s["steps"].items():
        print(f"  step {name:<18} rc {st['rc']:>3}  {st['seconds']:>4} s"
              + ("  (timed out)" if st["rc"] == 124 else ""))
    for side, r in s["time_to_accuracy"].items():
        hits = ", ".join(f"{p}% {r[p]['seconds']}s" if r[p]["seconds"] is not None else
                         f"{p}% -" for p in ("85", "88", "90") if p in r)
        finals = r.get("final_tta") or r.get("final") or {}
        print(f"  {side:<11} {hits}; final val_acc {r.get('final_val_acc')}; by TTA "
              + ", ".join(f"{m} {a:.4f}" for m, a in finals.items())
              + f"; total {r.get('total_seconds')} s")
    if s["ratios_fast_over_airbench94"]:
        print("  fast / airbench94: " + ", ".join(
            f"{k} {v}" for k, v in s["ratios_fast_over_airbench94"].items()))
    for name, r in s["runs"].items():
        print(f"  {name:<12} epochs {r['epochs']:>2}  final val_acc {r['final_val_acc']}  "
              f"img/s (epochs 2+) {r['img_s_epochs_2_on']}  (2-3) {r['img_s_epochs_2_3']}")
    print(f"  bf16 / fp32 img/s {s['bf16_over_fp32_img_s']}, val_acc bf16 - fp32 "
          f"{s['bf16_minus_fp32_val_acc']}; DDP (1 rank) / plain img/s "
          f"{s['ddp_over_plain_img_s']}; sync_bn / DDP img/s {s['sync_bn_over_ddp_img_s']}")


def main(argv: list[str]) -> None:
    if len(argv) >= 2 and argv[0] == "ddp":
        ddp(argv[1], argv[2:])
    elif len(argv) == 3 and argv[0] == "summary":
        print_summary(summary(Path(argv[1]), Path(argv[2])))
    else:
        raise SystemExit(__doc__.split("\n\n")[1])


if __name__ == "__main__":
    main(sys.argv[1:])
