"""The keys of how a run goes: ``train.*`` (epochs, devices, speed switches, checkpoints) and
``log.*`` (where it writes)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic.dataclasses import dataclass

from imgcls.config.fields import SECTION_CONFIG, Bool, Float, Int, check, key
from imgcls.config.train_keys import Monitor


@dataclass(frozen=True, config=SECTION_CONFIG)
class TrainConfig:
    epochs: Int = key(30, "epochs", ge=1)
    seed: Int = key(0, "seeds Python, NumPy, torch, shuffling and the split", ge=0)
    deterministic: Bool = key(False, "deterministic kernels (bit-exact resume on CPU)")
    device: str = key("auto", "`auto` (cuda, then mps, then cpu), `cpu`, `cuda`, `cuda:N`, "
                      "`mps`", infra=True)
    grad_clip: Float = key(0.0, "clip the gradient norm (0: off)", ge=0)
    accumulate: Int = key(1, "gradient accumulation: micro-batches per optimizer step (loss "
                          "divided by it; distributed runs all-reduce only on the last)", ge=1)
    monitor: Monitor = key(
        "val_acc", "the metric that picks `best.pt`, drives plateau and early stopping, in the "
        "direction `metric_table.METRICS` gives (`val_loss` is minimised); left unset: "
        "`val_balanced_acc` with `optim.class_weights` or `loader.sampler=balanced`, else "
        "`val_acc`")
    early_stop_patience: Int = key(0, "stop after this many epochs without an improvement of "
                                   "`train.monitor` (0: off); the count survives `--resume`",
                                   ge=0, note="0: off")
    early_stop_min_delta: Float = key(0.0, "an improvement must exceed this", ge=0)
    max_minutes: Float = key(0.0, "stop after the first epoch that ends past this many minutes "
                             "of wall time (0: off); the run resumes with `--resume`", ge=0,
                             infra=True, note="0: off")
    checkpoint_every_steps: Int = key(
        0, "also save a resumable `last.pt` inside epochs every N optimizer steps (0: off); "
        "`--resume` continues at the next batch, bit-identical on the CPU with "
        "`train.deterministic=true`. Single-process runs", ge=0, infra=True, note="0: off")
    checkpoint_every_minutes: Float = key(0.0, "the same, every M minutes of wall time", ge=0,
                                          infra=True, note="0: off")
    requeue: Bool = key(False, "SLURM: SIGUSR1 (`#SBATCH --signal=USR1@120`) saves at the next "
                        "step and runs `scontrol requeue $SLURM_JOB_ID`; the requeued job's "
                        "command (with `--name`) then resumes its run folder instead of "
                        "refusing it", infra=True)
    channels_last: Bool = key(True, "channels-last (NHWC) model and batches: faster "
                              "convolutions on CPU (1.3-2x here) and on tensor-core GPUs",
                              infra=True)
    amp: Literal["auto", "off", "bf16", "fp16"] = key(
        "auto", "mixed precision: `auto` (bf16 on GPUs that support it, else fp16 with a grad "
        "scaler on CUDA; bf16 on CPUs with native bfloat16, AVX512-BF16 or AMX, said at the "
        "start: 2.2-2.5x the steps/s; off on other CPUs, where it is emulated and slow, and on "
        "MPS), `off`, `bf16`, `fp16`")
    compile: Bool = key(False, "`torch.compile` the training model (10-60 s to compile; "
                        "evaluation stays eager)", infra=True)
    cudnn_benchmark: Bool = key(True, "CUDA: autotune convolution kernels (off with "
                                "`train.deterministic`)", infra=True)
    tf32: Bool = key(True, "CUDA: TF32 matmuls and convolutions; `false` keeps full fp32 (the "
                     "seed recipes: the tutorials' numbers)")
    ema: Float = key(0.0, "decay of an exponential moving average of the weights (0: off; e.g. "
                     "0.999); the average is what is validated, kept as best, predicted and "
                     "exported with", ge=0, lt=1, note="0: off")
    ema_every: Int = key(1, "update the average every N optimizer steps", ge=1)
    lookahead_every: Int = key(
        0, "airbench94's Lookahead: every N optimizer steps the weights (and BatchNorm "
        "statistics) move to a slow average of themselves, `slow += (1 - d) (fast - slow)`, "
        "with `d = train.lookahead_decay x (step / total steps)^3`, and end as that average "
        "(0: off; airbench94: 5)", ge=0, note="0: off")
    lookahead_decay: Float = key(0.7737809375, "the Lookahead decay at the last step (0.95^5, "
                                 "airbench94's)", ge=0, lt=1)
    whiten_bias_epochs: Int = key(0, "fastnet's whitening stem: its bias trains for N epochs, "
                                  "then keeps its value (airbench94: 3; 0: it trains "
                                  "throughout)", ge=0, note="0: the bias trains throughout")
    tta: Literal["none", "flip", "flip_translate"] = key(
        "none", "evaluation (and `imgcls evaluate`): `flip` averages the logits of each image "
        "and its mirror; `flip_translate` (airbench94's) averages that with the flip scores of "
        "the image shifted one pixel down-right and up-left (six passes); `predict --tta` "
        "scores images as `flip` does (softmax of those logits)")
    skip_nonfinite: Int = key(
        0, "`0`: a nan/inf training loss stops the run at the end of its epoch (exit 2, one "
        "line naming the epoch and batch, with a hint), keeping the last good "
        "`last.pt`/`best.pt`; `N`: skip up to N such batches of the run instead (checked every "
        "step: a sync per step). `evaluate`/`predict` refuse a checkpoint with non-finite "
        "weights", ge=0)
    dist_timeout_min: Float = key(30.0, "distributed: minutes a collective may wait (a crashed "
                                  "or stuck rank) before the job fails", gt=0, infra=True)

    def check_rules(self) -> None:
        """The rules between keys, checked by build_config after each key's own."""
        check(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device) is not None, "train.device",
              self.device, "auto, cpu, cuda, cuda:N or mps")


@dataclass(frozen=True, config=SECTION_CONFIG)
class LogConfig:
    output: str = key("runs", "folder holding the run folders", infra=True)
    name: str = key("", "run folder name (default `<model>-<timestamp>`)", infra=True)
    tensorboard: Bool = key(True, "write TensorBoard event files", infra=True)
    graph: Bool = key(False, "add the model graph to TensorBoard", infra=True)
    image_grid: Bool = key(True, "add a grid of the first training batch to TensorBoard",
                           infra=True)
    progress: Literal["auto", "on", "off"] = key(
        "auto", "progress bar: `auto` (on a terminal only), `on`, `off`", infra=True)

    def check_rules(self) -> None:
        """The rules between keys, checked by build_config after each key's own."""
        check(bool(self.output), "log.output", self.output, "must not be empty")
        check("/" not in self.name and "\\" not in self.name, "log.name", self.name,
              "a run name, not a path (use --output for the folder)")
