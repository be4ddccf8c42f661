"""The whole config: its sections, and every key's declaration as one table (:data:`KEYS`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from imgcls.config.data_keys import DataConfig, LoaderConfig, TransformConfig
from imgcls.config.fields import KeyInfo, section_keys
from imgcls.config.run_keys import LogConfig, TrainConfig
from imgcls.config.train_keys import ModelConfig, OptimConfig, SchedConfig


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
        explicit = differing(self.to_dict()) if self.explicit is None else self.explicit
        object.__setattr__(self, "explicit", frozenset(explicit))

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The sections as plain values (no ``explicit``)."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def to_saved(self) -> dict[str, Any]:
        """:meth:`to_dict` plus the keys the user set, as ``config.yaml`` and checkpoints keep
        it; :func:`imgcls.config.build_config` and :func:`imgcls.config.flatten` read it back."""
        return {**self.to_dict(), EXPLICIT: sorted(self.explicit or ())}


# The top-level key of a saved config that lists the keys the user set. A config saved before
# it existed is read by :func:`from_saved` as "the keys that differ from the defaults".
EXPLICIT = "explicit"
# The top-level key of a run's config.yaml with what the run resolved where a key left the choice
# to imgcls (the loader, the preset, the normalisation, amp, the device): a record, never read
# back as settings.
RESOLVED = "resolved"

SECTIONS: dict[str, type] = {
    "data": DataConfig, "loader": LoaderConfig, "transforms": TransformConfig,
    "model": ModelConfig, "optim": OptimConfig, "sched": SchedConfig, "train": TrainConfig,
    "log": LogConfig,
}
# Every key, dotted, as declared: type, default, help, range, role.
KEYS: dict[str, KeyInfo] = {info.name: info for section, cls in SECTIONS.items()
                            for info in section_keys(section, cls)}
# Where and how fast a run goes, not what it learns: these may differ between the command that
# started an experiment and one that continues it, and a search never varies them.
INFRA_KEYS = frozenset(name for name, info in KEYS.items() if info.infra)
# The transforms keys the memory loader reproduces; any other one in use needs the DataLoader.
MEMORY_TRANSFORM_KEYS = frozenset(name for name, info in KEYS.items() if info.memory)
# The transforms keys the photo loader reproduces (it also needs the random resized crop).
PHOTO_TRANSFORM_KEYS = frozenset(name for name, info in KEYS.items() if info.photo)


def defaults_flat() -> dict[str, Any]:
    """Every dotted key with its default."""
    return {name: info.default for name, info in KEYS.items()}


def differing(tree: dict[str, dict[str, Any]]) -> frozenset[str]:
    """The dotted keys of ``tree`` whose values differ from the defaults."""
    defaults = defaults_flat()
    return frozenset(name for name, value in _dotted(tree) if value != defaults.get(name))


def _dotted(tree: dict[str, dict[str, Any]]) -> list[tuple[str, Any]]:
    return [(f"{section}.{key}", value) for section, values in tree.items()
            for key, value in values.items()]
