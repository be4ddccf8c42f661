"""Typed, frozen configuration: defaults < YAML file < command line, validated once.

Every key is addressable as ``section.key`` (``optim.lr=0.05``). The resolved config is saved to
the run directory as ``config.yaml`` and inside every checkpoint, so a run can be rebuilt from it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from imgcls.errors import ImgclsError, first_line, short_repr
from imgcls.files import atomic_write_text
from imgcls.metric_table import monitor_names


@dataclass(frozen=True)
class DataConfig:
    # digits (bundled) | cifar10 | cifar100 | a folder of class folders | a list file (.txt)
    source: str = "cifar10"
    root: str = "./data"  # where CIFAR is downloaded; base for list-file paths
    val_fraction: float = 0.1  # held out (stratified, seeded) when there is no validation folder
    # holdout: validate on a val/ folder or the val_fraction holdout | test: train on the whole
    # training part and validate every epoch on the source's test split (as the tutorials do;
    # it flatters the best epoch) | none: no validation
    val_split: str = "holdout"
    # > 0: also hold out this fraction (stratified, seeded) of a single folder or list file as
    # the test split (`imgcls evaluate --split test`); val_fraction is then of the whole too
    test_fraction: float = 0.0
    download: bool = True  # let torchvision download CIFAR when it is not in `root`
    skip_bad_images: bool = False  # skip unreadable images (counted) instead of stopping
    # an image whose header says more pixels than this is a bad image, never decoded (a tiny
    # PNG can claim 12000x12000 and take gigabytes); PIL's own default limit; 0: no limit
    max_image_pixels: int = 89_478_485
    # dataloader | memory (decode once, keep uint8 on the device, augment per batch) | auto
    # (memory when the images fit memory_budget_mb and the transforms allow it)
    loader: str = "auto"
    memory_budget_mb: int = 2048  # auto: the largest decoded dataset (train + val) kept on device
    # seeds the holdout, the folds and the test part (None: train.seed); `imgcls repeat` pins it
    # so that its seeds vary the training, not the images validated on
    split_seed: int | None = None
    # > 0: validate on fold `fold` (0-based) of `folds` stratified folds of the training part
    # instead of the val_fraction holdout (`imgcls cv` runs every fold)
    folds: int = 0
    fold: int = 0


@dataclass(frozen=True)
class LoaderConfig:
    batch_size: int = 128
    eval_batch_size: int | None = None  # None: 2 x batch_size
    shuffle: bool = True
    num_workers: int = 0  # 0 decodes in the training process (best on 2 cores)
    pin_memory: bool | None = None  # None: on when training on CUDA
    drop_last: bool = False
    persistent_workers: bool = False
    # random (shuffle) | balanced: every class drawn equally often each epoch, small classes
    # repeated, large ones subsampled (imgcls.data.sampling); a pure function of (seed, epoch)
    sampler: str = "random"


@dataclass(frozen=True)
class TransformConfig:
    # auto | none | cifar | imagenet | digits (no flips): augmentations explicit keys add to
    preset: str = "auto"
    image_size: int | None = None  # None: the model's input size
    resize: int | None = None  # resize the shorter side first (eval: before center crop)
    center_crop: bool = False  # eval: center-crop to image_size after `resize`
    random_crop: bool = False  # train: RandomCrop(image_size, padding=crop_padding)
    crop_padding: list[int] = field(default_factory=lambda: [4])  # 1, 2 or 4 ints (l, t, r, b)
    # what the crop's border shows: constant (zeros) | reflect (airbench's, mirrored without the
    # edge pixel) | edge (the edge pixel repeated); torchvision's padding_mode
    crop_padding_mode: str = "constant"
    random_resized_crop: bool = False  # train: RandomResizedCrop(image_size)
    hflip: float = 0.0  # train: probability of a horizontal flip
    # random: a coin per image and batch | alternate (airbench; data.loader=memory only): each
    # image flipped on odd epochs exactly when it was not on even ones
    flip_mode: str = "random"
    cutout: int = 0  # train: side of a square zeroed at a random place (after normalisation)
    rotation: float = 0.0  # train: max degrees of a random rotation
    color_jitter: list[float] = field(default_factory=list)  # [brightness, contrast, sat, hue]
    grayscale: float = 0.0  # train: probability of RandomGrayscale
    affine_degrees: float = 0.0  # train: RandomAffine degrees
    affine_translate: float = 0.0  # train: RandomAffine max translation (fraction)
    affine_scale: list[float] = field(default_factory=list)  # train: RandomAffine [min, max]
    normalize: str = "auto"  # auto | dataset | imagenet | half | none | custom (mean/std below)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "simple_v3"
    pretrained: str = ""  # "" | "default" | a torchvision weights name | a local state_dict file
    # none | backbone (train the head only) | N (freeze the first N stages) | [patterns]: the
    # parameters whose names match (a glob with * ? [, else a substring: [conv, 'fc1.*']);
    # frozen BatchNorm stays in eval mode. YAML true/false (the old bool) mean backbone/none.
    freeze: str | bool | list[str] = "none"
    in_channels: int = 3
    head: str = "replace"  # replace (the last Linear) | append (keep it, add Linear(1000, classes))
    head_pool: str = "default"  # default | avg | max: global pooling before the classifier
    strict_load: bool = True  # pretrained file: false loads what fits and reports the rest
    # distributed runs: BatchNorm statistics over the global batch (SyncBatchNorm), not per process
    sync_bn: bool = False
    # your own class (model.name=FILE.py:CLASS or MODULE:CLASS): its constructor's arguments
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # `freeze` was a bool: old configs, checkpoints and `model.freeze=true` keep working.
        if isinstance(self.freeze, bool):
            object.__setattr__(self, "freeze", "backbone" if self.freeze else "none")
        elif isinstance(self.freeze, int):  # ModelConfig(freeze=2) from Python
            object.__setattr__(self, "freeze", str(self.freeze))
        elif isinstance(self.freeze, tuple):  # ModelConfig(freeze=("conv",)): saved as a list
            object.__setattr__(self, "freeze", list(self.freeze))


@dataclass(frozen=True)
class OptimConfig:
    name: str = "sgd"  # sgd | adam | adamw
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    label_smoothing: float = 0.0
    head_lr_mult: float = 1.0  # the head's lr is lr * head_lr_mult (its own parameter group)
    # none | linear: lr x (world size x train.accumulate), the linear scaling rule for the larger
    # effective batch of a distributed or accumulating run
    scale_lr: str = "none"
    # normalisation layers' parameters: lr x norm_lr_mult, weight_decay / norm_lr_mult (airbench
    # trains BatchNorm biases 64x faster with the same decay per step)
    norm_lr_mult: float = 1.0
    kernel: str = "auto"  # auto (fused on CUDA, foreach on CPU) | fused | foreach | loop
    # none | auto (inverse class frequency of the training part, mean weight per training image
    # 1) | [w0, w1, ...] (one per class): CrossEntropyLoss(weight=...) in training only
    class_weights: str | list[float] = "none"


@dataclass(frozen=True)
class SchedConfig:
    # none | step | multistep | exponential | cosine | linear (to min_lr) | plateau | onecycle
    name: str = "cosine"
    step_size: int = 30  # step: epochs between decays
    milestones: list[int] = field(default_factory=list)  # multistep: epochs
    gamma: float = 0.1  # step, multistep, exponential: decay factor
    min_lr: float = 0.0  # cosine: final lr; plateau: floor
    # plateau: monitor (follow train.monitor) | a metric train.monitor may name
    plateau_metric: str = "monitor"
    plateau_factor: float = 0.1
    plateau_patience: int = 10
    max_lr: float | None = None  # onecycle: peak lr (None: optim.lr)
    pct_start: float = 0.3  # onecycle: fraction of steps spent rising
    warmup_epochs: float = 1.0  # linear warmup in front of any scheduler (stepped per batch)
    warmup_start_factor: float = 0.1


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"  # auto (cuda, mps, cpu) | cpu | cuda | cuda:N | mps
    grad_clip: float = 0.0  # 0: off; else clip the global gradient norm to this
    accumulate: int = 1  # micro-batches per optimizer step (gradient accumulation)
    dist_timeout_min: float = 30.0  # distributed: a collective waiting longer than this fails
    max_minutes: float = 0.0  # > 0: stop after the epoch that ends past this wall time (resumable)
    # > 0: also save a resumable last.pt inside epochs, every N optimizer steps / M minutes
    # (--resume continues at the next batch; single-process runs)
    checkpoint_every_steps: int = 0
    checkpoint_every_minutes: float = 0.0
    # SLURM: SIGUSR1 (#SBATCH --signal=USR1@120) saves and requeues the job; a run started with
    # --name then resumes its folder instead of refusing it
    requeue: bool = False
    # ---- speed switches (docs/benchmarks.md): on where they help and are safe
    channels_last: bool = True  # NHWC activations: 1.3-2x faster convolutions on CPU and GPU
    # auto (bf16 on CUDA with bf16 support, else fp16 + grad scaler on CUDA; off on CPU and MPS,
    # where bf16 is slow) | off | bf16 | fp16
    amp: str = "auto"
    compile: bool = False  # torch.compile the model (costs 10-60 s up front)
    cudnn_benchmark: bool = True  # CUDA: pick the fastest conv kernels (off when deterministic)
    tf32: bool = True  # CUDA: TF32 matmuls and convolutions (false: full fp32, as the tutorials)
    ema: float = 0.0  # > 0: evaluate and save an exponential moving average of the weights
    ema_every: int = 1  # EMA update every N optimizer steps (decay applied per update)
    # airbench94's Lookahead: every N steps the weights move to an average of their recent
    # values, whose decay grows as lookahead_decay x (step / total steps)^3 (0: off; airbench: 5)
    lookahead_every: int = 0
    lookahead_decay: float = 0.7737809375  # 0.95^5, airbench94's
    # fastnet's whitening stem: its bias trains for the first N epochs, then keeps its value
    # (airbench94: 3); 0: it trains throughout
    whiten_bias_epochs: int = 0
    # evaluation: none | flip (average the logits of the image and its mirror) | flip_translate
    # (airbench's: also the flips of the image shifted by one pixel up-left and down-right)
    tta: str = "none"
    # > 0: skip up to this many batches whose loss is nan/inf (checked each step); 0: a
    # non-finite loss stops the run at the end of its epoch, keeping the last good checkpoint
    skip_nonfinite: int = 0
    # the metric that picks best.pt and drives sched.name=plateau and early stopping: one marked
    # monitor=True in metric_table.METRICS (val_acc, val_loss, ...), in the direction it gives;
    # left unset: val_balanced_acc with optim.class_weights or loader.sampler=balanced
    monitor: str = "val_acc"
    early_stop_patience: int = 0  # 0: off; else stop after N epochs without a better train.monitor
    early_stop_min_delta: float = 0.0  # early stopping: an improvement must exceed this


@dataclass(frozen=True)
class LogConfig:
    output: str = "runs"
    name: str = ""  # "" -> <model>-<timestamp>
    tensorboard: bool = True
    graph: bool = False  # add the model graph to TensorBoard
    image_grid: bool = True  # one grid of a training batch in TensorBoard
    progress: str = "auto"  # auto (bar on a terminal only) | on | off


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    transforms: TransformConfig = field(default_factory=TransformConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    # Not a key: the dotted keys the user set (a YAML file, a dict, KEY=VALUE or a flag), even
    # to their default value; presets fill in only the others. None (a Config built by hand):
    # the keys that differ from their defaults.
    explicit: frozenset[str] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        explicit = _differing(self.to_dict()) if self.explicit is None else self.explicit
        object.__setattr__(self, "explicit", frozenset(explicit))

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The sections as plain values (no ``explicit``)."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def to_saved(self) -> dict[str, Any]:
        """:meth:`to_dict` plus the keys the user set, as ``config.yaml`` and checkpoints keep
        it; :func:`build_config` and :func:`flatten` read it back."""
        return {**self.to_dict(), EXPLICIT: sorted(self.explicit or ())}


# The top-level key of a saved config that lists the keys the user set. A config saved before
# it existed is read by :func:`from_saved` as "the keys that differ from the defaults".
EXPLICIT = "explicit"
# The top-level key of a run's config.yaml with what the run resolved where a key left the choice
# to imgcls (the loader, the preset, the normalisation, amp, the device): a record, never read
# back as settings.
RESOLVED = "resolved"
_SECTION_HINTS = typing.get_type_hints(Config)
SECTIONS: dict[str, type] = {f.name: _SECTION_HINTS[f.name] for f in dataclasses.fields(Config)
                             if f.name != EXPLICIT}


def _differing(tree: dict[str, dict[str, Any]]) -> frozenset[str]:
    """The dotted keys of ``tree`` whose values differ from the defaults."""
    defaults = {section: dataclasses.asdict(cls()) for section, cls in SECTIONS.items()}
    return frozenset(
        f"{section}.{name}"
        for section, values in tree.items()
        for name, value in values.items()
        if value != defaults.get(section, {}).get(name)
    )
_HINTS = {name: typing.get_type_hints(cls) for name, cls in SECTIONS.items()}


# --------------------------------------------------------------------------- parsing and types


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false, so ``log.progress=off`` stays "off"."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


# More values than any config holds. YAML aliases of aliases ("billion laughs") make a few hundred
# bytes into billions of values, which dataclasses.asdict, repr and yaml.dump would all write out.
MAX_YAML_VALUES = 100_000


def _yaml_load(text: str, where: str) -> Any:
    try:
        data = yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 (a SafeLoader subclass)
        size = _expanded_size(data, {})
    except RecursionError:  # PyYAML composes nested lists by recursion: [[[[...]]]] ends it
        raise ImgclsError(f"{where}: its YAML is nested too deeply") from None
    if size > MAX_YAML_VALUES:
        raise ImgclsError(f"{where}: its YAML aliases expand to more than {MAX_YAML_VALUES:,} "
                          "values (or a value contains itself); write the values out instead")
    return data


def _expanded_size(value: Any, sizes: dict[int, int]) -> int:
    """How many values ``value`` holds with every alias written out; each shared list or mapping
    is counted once per use but walked once, so a bomb is measured in microseconds."""
    if not isinstance(value, (dict, list)):
        return 1
    if id(value) not in sizes:
        sizes[id(value)] = MAX_YAML_VALUES + 1  # until done: a list inside itself is too big
        items = value.values() if isinstance(value, dict) else value
        sizes[id(value)] = 1 + sum(_expanded_size(item, sizes) for item in items)
    return sizes[id(value)]


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against a field's type hint, converting the few safe cases (int -> float)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ImgclsError:
                pass
        raise ImgclsError(f"config key {key}: expected {_type_name(hint)}, got "
                          f"{short_repr(value)}")
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ImgclsError(f"config key {key}: expected a mapping of names to values, got "
                              f"{short_repr(value)}")
        return dict(value)
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]  # `crop_padding=4` means [4]
        if not isinstance(value, (list, tuple)):
            raise ImgclsError(f"config key {key}: expected a list, got {short_repr(value)}")
        return [_coerce(key, v, item) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is not None:
            if not math.isfinite(number):  # no key means anything by nan or inf
                raise ImgclsError(f"config key {key} = {short_repr(value)} is invalid: must be "
                                  "a finite number")
            return number
    elif hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise ImgclsError(f"config key {key}: expected {_type_name(hint)}, got {short_repr(value)}")


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


def _set(tree: dict[str, dict[str, Any]], key: str, value: Any) -> None:
    section, _, name = key.partition(".")
    if section not in SECTIONS or not name or name not in _HINTS[section]:
        raise ImgclsError(f"unknown config key {short_repr(key)} (see `imgcls train --help` for "
                          "the keys)")
    tree[section][name] = _coerce(key, value, _HINTS[section][name])


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=0.05"`` -> ``("optim.lr", 0.05)``; the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ImgclsError(f"expected KEY=VALUE, got {short_repr(text)}")
    try:
        value = _yaml_load(raw, f"override {short_repr(key)}") if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a recipe file as a nested dict (``{section: {key: value}}``)."""
    path = Path(path)
    try:
        data = _yaml_load(path.read_text(encoding="utf-8"), f"config file {path}")
    except FileNotFoundError:
        raise ImgclsError(f"config file not found: {path}") from None
    except (OSError, ValueError, yaml.YAMLError) as exc:  # ValueError: not UTF-8 text
        raise ImgclsError(f"cannot read config file {path}: {first_line(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ImgclsError(f"config file {path}: expected a mapping of sections, got "
                          f"{short_repr(data)}")
    return data


def flatten(tree: dict[str, Any], where: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}``; a non-mapping section is an error.

    A saved config (``config.yaml``, ``best.yaml``) lists the keys its user set under
    ``explicit``; of the others, those at their default are left out, so that reading it as a
    recipe sets what its run set and leaves the rest to the presets.
    """
    listed = _explicit_list(tree.get(EXPLICIT), where)
    flat: dict[str, Any] = {}
    for section, values in tree.items():
        if values is None or section in (EXPLICIT, RESOLVED):  # None: a section commented out
            continue
        if not isinstance(values, dict):
            raise ImgclsError(
                f"config{where}: section {short_repr(section)} must be a mapping of keys, got "
                f"{short_repr(values)}"
            )
        for name, value in values.items():
            flat[f"{section}.{name}"] = value
    if listed is not None:
        unset = _defaults_flat()
        flat = {key: value for key, value in flat.items()
                if key in listed or key not in unset or unset[key] != value}
    return flat


def _explicit_list(value: Any, where: str = "") -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(key, str) for key in value):
        raise ImgclsError(f"config{where}: {EXPLICIT!r} must be a list of keys, got "
                          f"{short_repr(value)}")
    return frozenset(value)


def _defaults_flat() -> dict[str, Any]:
    return {f"{section}.{name}": value
            for section, cls in SECTIONS.items()
            for name, value in dataclasses.asdict(cls()).items()}


def from_saved(tree: dict[str, Any]) -> Config:
    """A config as a run saved it (``config.yaml``, a checkpoint's ``config``): the keys it lists
    as set are the explicit ones; a config saved before that list existed counts the keys that
    differ from their defaults, as imgcls then read them."""
    cfg = build_config(tree)
    if EXPLICIT in tree:
        return cfg
    # the monitor the run chose best.pt by stays, whatever today's default would be
    old = dataclasses.replace(cfg, explicit=None)
    return dataclasses.replace(old, explicit=(old.explicit or frozenset()) | {"train.monitor"})


def build_config(
    base: Config | dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Layer dotted ``overrides`` over ``base`` (a Config, a nested dict, or the defaults).

    >>> build_config(overrides={"optim.lr": 0.05}).optim.lr
    0.05

    Every key given in ``base`` (a dict) or ``overrides`` counts as set by the user
    (:attr:`Config.explicit`), whatever its value; a Config ``base`` brings its own.

    >>> "optim.lr" in build_config(overrides={"optim.lr": 0.05}).explicit
    True
    """
    explicit: set[str] = set()
    if isinstance(base, Config):
        tree = base.to_dict()
        explicit.update(base.explicit or ())
    else:
        tree = Config().to_dict()
        for key, value in flatten(base or {}).items():
            _set(tree, key, value)
            explicit.add(key)
        listed = _explicit_list((base or {}).get(EXPLICIT))
        if listed is not None:  # a saved config: what its user set, not every key it holds
            explicit = {key for key in listed if _known(key)}
    for key, value in (overrides or {}).items():
        _set(tree, key, value)
        explicit.add(key)
    if "train.monitor" not in explicit:
        tree["train"]["monitor"] = default_monitor(tree)
    cfg = Config(**{name: SECTIONS[name](**values) for name, values in tree.items()},
                 explicit=frozenset(explicit))
    validate(cfg)
    return cfg


def default_monitor(tree: dict[str, dict[str, Any]]) -> str:
    """``train.monitor`` when the user does not set it: ``val_balanced_acc`` when the classes
    are weighted or sampled evenly (the data is imbalanced, and accuracy would pick the epoch
    that favours the majority class), else ``val_acc``."""
    return "val_balanced_acc" if imbalance_handled(tree) else TrainConfig().monitor


def imbalance_handled(tree: dict[str, dict[str, Any]]) -> bool:
    """Whether ``optim.class_weights`` or ``loader.sampler=balanced`` is on."""
    return tree["optim"]["class_weights"] != "none" or tree["loader"]["sampler"] == "balanced"


def _known(key: str) -> bool:
    section, _, name = key.partition(".")
    return section in SECTIONS and name in _HINTS[section]


def save_yaml(cfg: Config, path: str | Path, resolved: dict[str, Any] | None = None) -> None:
    """``config.yaml``: the config with the keys the user set, and ``resolved``: what the run
    made of the keys it decides (``data.loader: auto`` -> ``memory``, ...)."""
    saved = cfg.to_saved()
    if resolved:
        saved[RESOLVED] = resolved
    atomic_write_text(Path(path), yaml.safe_dump(saved, sort_keys=False))


def describe_keys() -> str:
    """Every key with its default, for ``imgcls train --help`` and docs/config.md."""
    lines = []
    defaults = Config().to_dict()
    for section, values in defaults.items():
        for name, value in values.items():
            lines.append(f"  {section}.{name} = {value!r}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- validation

# What train.monitor and sched.plateau_metric may watch, and which way: metric_table.METRICS.
MONITOR_METRICS = monitor_names()

CHOICES = {
    "data.loader": ("auto", "memory", "dataloader"),
    "data.val_split": ("holdout", "test", "none"),
    "transforms.preset": ("auto", "none", "cifar", "imagenet", "digits"),
    "transforms.normalize": ("auto", "dataset", "imagenet", "half", "none", "custom"),
    "model.head": ("replace", "append"),
    "model.head_pool": ("default", "avg", "max"),
    "optim.name": ("sgd", "adam", "adamw"),
    "optim.scale_lr": ("none", "linear"),
    "optim.kernel": ("auto", "fused", "foreach", "loop"),
    "loader.sampler": ("random", "balanced"),
    "sched.name": (
        "none", "step", "multistep", "exponential", "cosine", "linear", "plateau", "onecycle"
    ),
    "transforms.flip_mode": ("random", "alternate"),
    "transforms.crop_padding_mode": ("constant", "reflect", "edge"),
    "train.amp": ("auto", "off", "bf16", "fp16"),
    "train.tta": ("none", "flip", "flip_translate"),
    "train.monitor": MONITOR_METRICS,
    "sched.plateau_metric": ("monitor", *MONITOR_METRICS),
    "log.progress": ("auto", "on", "off"),
}


def _check(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ImgclsError(f"config key {key} = {short_repr(value)} is invalid: {rule}")


def validate(cfg: Config) -> None:
    """Reject impossible values before anything is built or trained."""
    tree = cfg.to_dict()
    for key, choices in CHOICES.items():
        section, name = key.split(".")
        value = tree[section][name]
        _check(value in choices, key, value, f"expected one of {', '.join(choices)}")
    _validate_data(cfg.data)
    _validate_loader(cfg.loader)
    _validate_transforms(cfg.transforms)
    _validate_model(cfg.model)
    _validate_optim(cfg.optim)
    _validate_sched(cfg.sched)
    _validate_train(cfg.train)
    _validate_log(cfg.log)


def _validate_data(d: DataConfig) -> None:
    _check(bool(d.source), "data.source", d.source, "must not be empty")
    _check(0.0 <= d.val_fraction < 1.0, "data.val_fraction", d.val_fraction, "must be in [0, 1)")
    _check(d.memory_budget_mb >= 0, "data.memory_budget_mb", d.memory_budget_mb, "must be >= 0")
    _check(d.max_image_pixels >= 0, "data.max_image_pixels", d.max_image_pixels,
           "must be >= 0 (0: no limit)")
    _check(0.0 <= d.test_fraction < 1.0, "data.test_fraction", d.test_fraction,
           "must be in [0, 1)")
    _check(d.val_fraction + d.test_fraction < 1.0, "data.test_fraction", d.test_fraction,
           f"with data.val_fraction={d.val_fraction:g} it leaves no training images")
    _check(d.split_seed is None or d.split_seed >= 0, "data.split_seed", d.split_seed,
           "must be >= 0 (or null: train.seed)")
    _check(d.folds == 0 or d.folds >= 2, "data.folds", d.folds, "0 (off) or at least 2")
    _check(0 <= d.fold < max(d.folds, 1), "data.fold", d.fold,
           f"a fold index from 0 to {max(d.folds - 1, 0)} (data.folds={d.folds})")
    _check(d.folds == 0 or d.val_split == "holdout", "data.val_split", d.val_split,
           "data.folds validates on a fold; it needs data.val_split=holdout")


def _validate_loader(ld: LoaderConfig) -> None:
    _check(ld.batch_size >= 1, "loader.batch_size", ld.batch_size, "must be >= 1")
    _check(
        ld.eval_batch_size is None or ld.eval_batch_size >= 1,
        "loader.eval_batch_size", ld.eval_batch_size, "must be >= 1",
    )
    _check(ld.num_workers >= 0, "loader.num_workers", ld.num_workers, "must be >= 0")
    _check(ld.sampler != "balanced" or ld.shuffle, "loader.shuffle", ld.shuffle,
           "loader.sampler=balanced draws a seeded random order; it needs loader.shuffle=true")


def _validate_transforms(t: TransformConfig) -> None:
    _check(
        t.image_size is None or t.image_size >= 1, "transforms.image_size", t.image_size,
        "must be >= 1",
    )
    _check(t.resize is None or t.resize >= 1, "transforms.resize", t.resize, "must be >= 1")
    _check(
        len(t.crop_padding) in (1, 2, 4) and min(t.crop_padding) >= 0,
        "transforms.crop_padding", t.crop_padding, "1, 2 or 4 non-negative ints",
    )
    for key, p in (("transforms.hflip", t.hflip), ("transforms.grayscale", t.grayscale)):
        _check(0.0 <= p <= 1.0, key, p, "a probability must be in [0, 1]")
    _check(
        len(t.color_jitter) in (0, 4) and all(v >= 0 for v in t.color_jitter),
        "transforms.color_jitter", t.color_jitter, "[brightness, contrast, saturation, hue] >= 0",
    )
    _check(
        len(t.color_jitter) == 0 or t.color_jitter[3] <= 0.5,
        "transforms.color_jitter", t.color_jitter, "hue must be <= 0.5",
    )
    _check(
        len(t.affine_scale) in (0, 2), "transforms.affine_scale", t.affine_scale, "[min, max]"
    )
    _check(
        0.0 <= t.affine_translate <= 1.0,
        "transforms.affine_translate", t.affine_translate, "must be in [0, 1]",
    )
    if t.normalize == "custom":
        _check(
            len(t.mean) == len(t.std) > 0 and all(v > 0 for v in t.std),
            "transforms.mean/std", (t.mean, t.std), "custom needs equal-length mean and std > 0",
        )
    _check(t.cutout >= 0, "transforms.cutout", t.cutout, "must be >= 0 (pixels)")


def _validate_model(m: ModelConfig) -> None:
    _check(m.in_channels in (1, 3), "model.in_channels", m.in_channels, "1 or 3")
    _check(bool(m.name), "model.name", m.name, "must not be empty")
    if isinstance(m.freeze, list):
        _check(
            bool(m.freeze) and all(isinstance(p, str) and p.strip() for p in m.freeze),
            "model.freeze", m.freeze, "a list of non-empty parameter-name patterns (e.g. [conv])",
        )
    else:
        _check(
            m.freeze in ("none", "backbone") or re.fullmatch(r"\d+", str(m.freeze)) is not None,
            "model.freeze", m.freeze,
            "none, backbone (true), N to freeze the first N stages (e.g. 2), or a list of "
            "parameter-name patterns (e.g. [conv])",
        )


def _validate_optim(o: OptimConfig) -> None:
    _check(o.lr > 0, "optim.lr", o.lr, "must be > 0")
    _check(o.momentum >= 0, "optim.momentum", o.momentum, "must be >= 0")
    _check(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "must be >= 0")
    _check(
        not o.nesterov or (o.name == "sgd" and o.momentum > 0),
        "optim.nesterov", o.nesterov, "needs optim.name=sgd and optim.momentum > 0",
    )
    _check(
        len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas", o.betas,
        "two values in [0, 1)",
    )
    _check(
        0.0 <= o.label_smoothing < 1.0, "optim.label_smoothing", o.label_smoothing,
        "must be in [0, 1)",
    )
    _check(
        math.isfinite(o.head_lr_mult) and o.head_lr_mult > 0, "optim.head_lr_mult",
        o.head_lr_mult, "must be > 0",
    )
    _check(
        math.isfinite(o.norm_lr_mult) and o.norm_lr_mult > 0, "optim.norm_lr_mult",
        o.norm_lr_mult, "must be > 0",
    )
    weights = o.class_weights
    if isinstance(weights, str):
        _check(weights in ("none", "auto"), "optim.class_weights", weights,
               "none, auto or a list of positive weights, one per class")
    else:
        _check(bool(weights) and all(math.isfinite(w) and w > 0 for w in weights),
               "optim.class_weights", weights, "every weight must be a finite number > 0")


def _validate_sched(s: SchedConfig) -> None:
    _check(s.step_size >= 1, "sched.step_size", s.step_size, "must be >= 1")
    _check(s.gamma > 0, "sched.gamma", s.gamma, "must be > 0")
    _check(
        list(s.milestones) == sorted(s.milestones) and all(m > 0 for m in s.milestones),
        "sched.milestones", s.milestones, "increasing positive epochs",
    )
    _check(s.name != "multistep" or bool(s.milestones), "sched.milestones", s.milestones,
           "multistep needs at least one milestone")
    _check(s.min_lr >= 0, "sched.min_lr", s.min_lr, "must be >= 0")
    _check(0 < s.plateau_factor < 1, "sched.plateau_factor", s.plateau_factor, "in (0, 1)")
    _check(s.plateau_patience >= 0, "sched.plateau_patience", s.plateau_patience, ">= 0")
    _check(s.max_lr is None or s.max_lr > 0, "sched.max_lr", s.max_lr, "must be > 0")
    _check(0 < s.pct_start < 1, "sched.pct_start", s.pct_start, "must be in (0, 1)")
    _check(s.warmup_epochs >= 0, "sched.warmup_epochs", s.warmup_epochs, "must be >= 0")
    _check(
        0 < s.warmup_start_factor <= 1, "sched.warmup_start_factor", s.warmup_start_factor,
        "must be in (0, 1]",
    )


def _validate_train(tr: TrainConfig) -> None:
    _check(tr.epochs >= 1, "train.epochs", tr.epochs, "must be >= 1")
    _check(tr.seed >= 0, "train.seed", tr.seed, "must be >= 0")
    _check(tr.grad_clip >= 0, "train.grad_clip", tr.grad_clip, "must be >= 0")
    _check(tr.accumulate >= 1, "train.accumulate", tr.accumulate, "must be >= 1")
    _check(tr.skip_nonfinite >= 0, "train.skip_nonfinite", tr.skip_nonfinite, "must be >= 0")
    _check(0.0 <= tr.ema < 1.0, "train.ema", tr.ema, "a decay in [0, 1) (0: off)")
    _check(tr.max_minutes >= 0, "train.max_minutes", tr.max_minutes, "must be >= 0 (0: off)")
    _check(tr.checkpoint_every_steps >= 0, "train.checkpoint_every_steps",
           tr.checkpoint_every_steps, "must be >= 0 (0: off)")
    _check(tr.checkpoint_every_minutes >= 0, "train.checkpoint_every_minutes",
           tr.checkpoint_every_minutes, "must be >= 0 (0: off)")
    _check(tr.ema_every >= 1, "train.ema_every", tr.ema_every, "must be >= 1")
    _check(tr.lookahead_every >= 0, "train.lookahead_every", tr.lookahead_every,
           "must be >= 0 (0: off)")
    _check(0.0 <= tr.lookahead_decay < 1.0, "train.lookahead_decay", tr.lookahead_decay,
           "a decay in [0, 1)")
    _check(tr.whiten_bias_epochs >= 0, "train.whiten_bias_epochs", tr.whiten_bias_epochs,
           "must be >= 0 (0: the bias trains throughout)")
    _check(tr.dist_timeout_min > 0, "train.dist_timeout_min", tr.dist_timeout_min, "must be > 0")
    _check(
        re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", tr.device) is not None,
        "train.device", tr.device, "auto, cpu, cuda, cuda:N or mps",
    )
    _check(
        tr.early_stop_patience >= 0, "train.early_stop_patience", tr.early_stop_patience,
        "must be >= 0 (0: off)",
    )
    _check(
        math.isfinite(tr.early_stop_min_delta) and tr.early_stop_min_delta >= 0,
        "train.early_stop_min_delta", tr.early_stop_min_delta, "must be >= 0 and finite",
    )


def _validate_log(lg: LogConfig) -> None:
    _check(bool(lg.output), "log.output", lg.output, "must not be empty")
    _check("/" not in lg.name and "\\" not in lg.name, "log.name", lg.name,
           "a run name, not a path (use --output for the folder)")
