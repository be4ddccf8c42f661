"""The keys of what a run learns: ``model.*``, ``optim.*`` and ``sched.*``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import field_validator
from pydantic.dataclasses import dataclass

from imgcls.config.fields import SECTION_CONFIG, Bool, Float, FloatList, Int, IntList, check, key
from imgcls.metric_table import monitor_names

# What train.monitor and sched.plateau_metric may watch, and which way: metric_table.METRICS.
Monitor = Literal[monitor_names()]  # type: ignore[valid-type]
PlateauMetric = Literal[("monitor", *monitor_names())]  # type: ignore[valid-type]


@dataclass(frozen=True, config=SECTION_CONFIG)
class ModelConfig:
    name: str = key("simple_v3", "see `imgcls models`; any timm model as `timm/NAME` (the "
                    "`[timm]` extra); or your own class, `FILE.py:CLASS` or `MODULE:CLASS`")
    pretrained: str = key("", "`\"\"` (random), `default` or a torchvision weights name (timm: "
                          "a pretrained tag), or a local state_dict file (`.safetensors` too)")
    freeze: str | list[str] = key(
        "none", "`none`; `backbone` (train the head only); `N`: freeze the first N stages "
        "(resnet: stem, layer1..4; vgg and imgcls's CNNs: conv blocks split at max-pools, then "
        "the classifier's hidden layers; others: top-level blocks). A list of patterns freezes "
        "the parameters whose names match one: with `*`, `?` or `[` a glob over the whole name "
        "(`'features.*'`), else a substring (`[conv]`); a pattern that matches nothing is an "
        "error. Frozen BatchNorm (all its parameters) stays in eval mode. `true`/`false` mean "
        "`backbone`/`none`")
    in_channels: Literal[1, 3] = key(3, "1 for greyscale input")
    head: Literal["replace", "append"] = key(
        "replace", "`replace` the last classifier layer; `append`: keep it (1000-way, "
        "pretrained; imgcls's CNNs: 10-way) and add `Linear(1000, classes)` after it, seed 001's "
        "`add_linear`. The appended layer alone is the head for `freeze` and `head_lr_mult`")
    head_pool: Literal["default", "avg", "max"] = key(
        "default", "`avg` or `max` global pooling before the classifier; models with a global "
        "`avgpool` only (resnet, resnext, regnet, efficientnet, mobilenet_v3, convnext, swin, "
        "googlenet, inception_v3); timm's: its `global_pool`")
    drop_path: Float | None = key(
        None, "stochastic depth: the chance that a residual block is skipped in a training "
        "step, rising linearly to this value in the last block (torchvision's "
        "`stochastic_depth_prob`: convnext, efficientnet, swin and maxvit models; timm's "
        "`drop_path_rate`); null: the model's default (0.1 to 0.5; timm: usually 0)", ge=0, lt=1)
    strict_load: Bool = key(True, "`model.pretrained` file: any key that does not fit (other "
                            "than the new head's) is an error; `false` loads what fits and logs "
                            "the missing, unexpected and other-shape keys")
    sync_bn: Bool = key(False, "distributed runs: convert BatchNorm to `SyncBatchNorm` "
                        "(statistics over the global batch; costs a collective per BatchNorm "
                        "layer; CUDA only, as PyTorch's `SyncBatchNorm`; ignored in one process)")
    cam_layer: str = key("", "`imgcls explain`'s Grad-CAM layer, a module name of the model "
                         "(`layer4`); `\"\"`: the last one whose output is still a map of the "
                         "image (at least 2 x 2), chosen at the input size")
    kwargs: dict[str, Any] = key({}, "your own class (`model.name=FILE.py:CLASS` or "
                                 "`MODULE:CLASS`): keyword arguments of its constructor, e.g. "
                                 "`model.kwargs={width: 64}`")

    @field_validator("freeze", mode="before")
    @classmethod
    def _freeze_forms(cls, value: Any) -> Any:
        # `freeze` was a bool: old configs, checkpoints and `model.freeze=true` keep working
        if isinstance(value, bool):
            return "backbone" if value else "none"
        return list(value) if isinstance(value, tuple) else value

    def check_rules(self) -> None:
        """The rules between keys, checked by build_config after each key's own."""
        check(bool(self.name), "model.name", self.name, "must not be empty")
        if isinstance(self.freeze, list):
            check(bool(self.freeze) and all(p.strip() for p in self.freeze), "model.freeze",
                  self.freeze, "a list of non-empty parameter-name patterns (e.g. [conv])")
        else:
            check(self.freeze in ("none", "backbone") or self.freeze.isdigit(), "model.freeze",
                  self.freeze, "none, backbone (true), N to freeze the first N stages (e.g. 2), "
                  "or a list of parameter-name patterns (e.g. [conv])")


@dataclass(frozen=True, config=SECTION_CONFIG)
class OptimConfig:
    name: Literal["sgd", "adam", "adamw"] = key("sgd", "`sgd`, `adam`, `adamw`")
    lr: Float = key(0.05, "learning rate", gt=0)
    momentum: Float = key(0.9, "SGD momentum", ge=0)
    nesterov: Bool = key(True, "SGD Nesterov momentum")
    weight_decay: Float = key(5e-4, "weight decay", ge=0)
    betas: FloatList = key([0.9, 0.999], "Adam/AdamW betas")
    label_smoothing: Float = key(0.0, "cross-entropy label smoothing (single-label runs)", ge=0,
                                 lt=1)
    loss: Literal["auto", "cross_entropy", "bce", "asl"] = key(
        "auto", "the training loss: `auto` (`cross_entropy` for one label per image, `bce` for a "
        "label CSV's several), `cross_entropy`, `bce` (binary cross-entropy on each class's "
        "logit), `asl` (the asymmetric loss of Ridnik et al. 2021 for multi-label data: "
        "`asl_gamma_neg`, `asl_gamma_pos`, `asl_clip`). See "
        "[Several labels per image](own-data.md#several-labels-per-image)")
    asl_gamma_neg: Float = key(4.0, "`loss=asl`: focusing exponent of the negative labels (easy "
                               "negatives count less)", ge=0)
    asl_gamma_pos: Float = key(0.0, "`loss=asl`: focusing exponent of the positive labels",
                               ge=0)
    asl_clip: Float = key(0.05, "`loss=asl`: probability margin below which a negative label "
                          "counts nothing (0: off)", ge=0, lt=1)
    head_lr_mult: Float = key(1.0, "the head's lr is `lr` x this (its own parameter group, "
                              "scaled by the schedule like the rest)", gt=0)
    scale_lr: Literal["none", "linear"] = key(
        "none", "`linear`: lr x world size x `train.accumulate` (the linear scaling rule for the "
        "larger effective batch); the saved config keeps the unscaled lr")
    norm_lr_mult: Float = key(1.0, "normalisation layers' parameters (BatchNorm, GroupNorm, "
                              "LayerNorm) train at `lr` x this with `weight_decay` / this, in "
                              "their own parameter group (airbench: 64 for its BatchNorm "
                              "biases)", gt=0)
    kernel: Literal["auto", "fused", "foreach", "loop"] = key(
        "auto", "optimizer implementation: `auto` (`fused` on CUDA, `foreach` on CPU), `fused`, "
        "`foreach`, `loop` (torch's per-tensor loop)", infra=True)
    class_weights: str | list[Float] = key(
        "none", "per-class weights of the training loss: `none`, `auto` (inverse class "
        "frequency of the training part, normalised so that the mean weight per training image "
        "is 1; multi-label: each class's positives weighted by its negatives / positives, "
        "capped at 100; printed at the start), or a list `[w0, w1, ...]`, one positive weight "
        "per class. "
        "`val_loss` stays unweighted. See [Imbalanced classes](own-data.md#imbalanced-classes)")

    def check_rules(self) -> None:
        """The rules between keys, checked by build_config after each key's own."""
        check(not self.nesterov or (self.name == "sgd" and self.momentum > 0), "optim.nesterov",
              self.nesterov, "needs optim.name=sgd and optim.momentum > 0")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas",
              self.betas, "two values in [0, 1)")
        weights = self.class_weights
        if isinstance(weights, str):
            check(weights in ("none", "auto"), "optim.class_weights", weights,
                  "none, auto or a list of positive weights, one per class")
        else:
            check(bool(weights) and all(w > 0 for w in weights), "optim.class_weights",
                  weights, "every weight must be a finite number > 0")


@dataclass(frozen=True, config=SECTION_CONFIG)
class SchedConfig:
    name: Literal["none", "step", "multistep", "exponential", "cosine", "linear", "plateau",
                  "onecycle"] = key(
        "cosine", "`none`, `step`, `multistep`, `exponential` (per epoch), `cosine`, `linear` "
        "(straight down to `min_lr`), `onecycle` (per batch), `plateau` (per epoch, on a val "
        "metric)")
    step_size: Int = key(30, "step: epochs between decays", ge=1)
    milestones: IntList = key([], "multistep: epochs at which lr is multiplied by gamma")
    gamma: Float = key(0.1, "step, multistep, exponential: decay factor", gt=0)
    min_lr: Float = key(0.0, "cosine, linear: final lr; plateau: floor", ge=0)
    plateau_metric: PlateauMetric = key(
        "monitor", "plateau watches `train.monitor` (`monitor`), or a metric `train.monitor` "
        "may name")
    plateau_factor: Float = key(0.1, "plateau: decay factor", gt=0, lt=1)
    plateau_patience: Int = key(10, "plateau: epochs without improvement before decaying", ge=0)
    max_lr: Float | None = key(None, "onecycle: peak lr (null: `optim.lr`)", gt=0)
    pct_start: Float = key(0.3, "onecycle: fraction of steps spent rising", gt=0, lt=1)
    warmup_epochs: Float = key(1.0, "linear warmup (per batch) in front of any scheduler", ge=0)
    warmup_start_factor: Float = key(0.1, "warmup starts at this fraction of lr", gt=0, le=1)

    def check_rules(self) -> None:
        """The rules between keys, checked by build_config after each key's own."""
        ms = self.milestones
        check(ms == sorted(ms) and all(m > 0 for m in ms), "sched.milestones", ms,
              "increasing positive epochs")
        check(self.name != "multistep" or bool(ms), "sched.milestones", ms,
              "multistep needs at least one milestone")
