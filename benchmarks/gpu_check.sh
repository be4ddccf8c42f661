#!/usr/bin/env bash
# Everything in imgcls that needs CUDA, in under 8 minutes on one GPU (each step has a time
# limit; a step that runs out is reported, and the next one starts):
#   1. time_to_accuracy: configs/fast.yaml and airbench94 (native: fp16, its CUDA-event timing)
#      side by side on the same 45,000 / 5,000 split, thresholds, final accuracy by TTA, ratios
#   2. bf16 against fp32: fast.yaml with train.amp=bf16, and with train.amp=off train.tf32=false
#      (final val_acc, training images/s)
#   3. the NCCL / DistributedDataParallel path, one rank under torchrun (benchmarks/gpu_check.py
#      ddp: imgcls treats a torchrun job of one process as a plain process, so it is forced),
#      3 epochs; its images/s against the plain bf16 run: the DDP wrapper's overhead on one GPU
#   4. the same with model.sync_bn=true
# On a machine without CUDA it says so in one line and exits 0.
#
#   benchmarks/gpu_check.sh [DATA]    DATA: CIFAR-10 as a folder holding train/ (or class folders),
#                                     default ../shared/data/cifar10
# Figures go to $OUT (default runs/gpu-check-<time>): each step's log, time_to_accuracy.json,
# each run's metrics.jsonl, steps.tsv (rc, seconds) and summary.json; the summary is printed.
# Checkpoints and the decode cache stay in $WORK (default $TMPDIR/imgcls-gpu-check).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null
then
    echo "gpu_check: no CUDA device on this machine (torch.cuda.is_available() is false)," \
         "nothing to check"
    exit 0
fi

DATA=${1:-${DATA:-../shared/data/cifar10}}
if [ -d "$DATA/train" ]; then SRC="$DATA/train"; else SRC="$DATA"; fi
if [ ! -d "$SRC" ]; then
    echo "gpu_check: no data at $DATA (pass CIFAR-10's folder as the first argument)" >&2
    exit 2
fi
SRC=$(realpath "$SRC")  # the path time_to_accuracy.py uses: the same decode cache entries
OUT=${OUT:-runs/gpu-check-$(date +%Y%m%d-%H%M%S)}
WORK=${WORK:-${TMPDIR:-/tmp}/imgcls-gpu-check}
mkdir -p "$OUT" "$WORK"
: > "$OUT/steps.tsv"
START=$SECONDS

step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, log it, note rc and seconds
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    echo "== $name (limit ${limit} s)"
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >> "$OUT/steps.tsv"
    tail -n 2 "$OUT/$name.log" | cut -c 1-200
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} > "$OUT/device.txt"

COMMON=(--config configs/fast.yaml "data.source=$SRC" "data.root=$WORK/cache"
        data.val_fraction=0.1 data.val_split=holdout train.seed=0 "log.output=$WORK/runs"
        log.progress=off log.tensorboard=false)

step time_to_accuracy 180 "$PY" benchmarks/time_to_accuracy.py --data "$SRC" --recipes fast \
    --peer airbench94 --output "$WORK/tta" --cache-dir "$WORK/cache"
tail -n 1 "$OUT/time_to_accuracy.log" > "$OUT/time_to_accuracy.json"

step bf16 70 "$PY" -m imgcls train "${COMMON[@]}" log.name=bf16 train.amp=bf16
step fp32 70 "$PY" -m imgcls train "${COMMON[@]}" log.name=fp32 train.amp=off train.tf32=false

TORCHRUN=("$PY" -m torch.distributed.run --standalone --nproc_per_node 1 benchmarks/gpu_check.py
          ddp configs/fast.yaml "${COMMON[@]:2}" train.amp=bf16 train.epochs=3)
step ddp 55 "${TORCHRUN[@]}" log.name=ddp
step ddp_sync_bn 55 "${TORCHRUN[@]}" log.name=ddp_sync_bn model.sync_bn=true

"$PY" benchmarks/gpu_check.py summary "$OUT" "$WORK"
echo "gpu_check: $((SECONDS - START)) s; figures in $OUT"
