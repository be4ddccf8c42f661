"""Typed, frozen configuration: defaults < YAML file < command line, validated once.

Every key is declared once (``config/data_keys.py``, ``train_keys.py``, ``run_keys.py``: type,
default, help, range, role) and addressable as ``section.key`` (``optim.lr=0.05``). The resolved
config is saved to the run directory as ``config.yaml`` and inside every checkpoint, so a run
can be rebuilt from it.
"""

from imgcls.config.build import (
    build_config,
    choices,
    default_monitor,
    flatten,
    from_saved,
    imbalance_handled,
    save_yaml,
    type_name,
)
from imgcls.config.data_keys import DataConfig, LoaderConfig, TransformConfig
from imgcls.config.reference import describe_keys, help_keys
from imgcls.config.run_keys import LogConfig, TrainConfig
from imgcls.config.schema import (
    EXPLICIT,
    INFRA_KEYS,
    KEYS,
    MEMORY_TRANSFORM_KEYS,
    PHOTO_TRANSFORM_KEYS,
    RESOLVED,
    SECTIONS,
    Config,
)
from imgcls.config.train_keys import ModelConfig, OptimConfig, SchedConfig
from imgcls.config.yaml_io import MAX_YAML_VALUES, load_yaml, parse_override

__all__ = [
    "EXPLICIT", "INFRA_KEYS", "KEYS", "MAX_YAML_VALUES", "MEMORY_TRANSFORM_KEYS",
    "PHOTO_TRANSFORM_KEYS", "RESOLVED", "SECTIONS", "Config", "DataConfig", "LoaderConfig",
    "LogConfig", "ModelConfig", "OptimConfig", "SchedConfig", "TrainConfig", "TransformConfig",
    "build_config", "choices", "default_monitor", "describe_keys", "flatten", "from_saved",
    "help_keys", "imbalance_handled", "load_yaml", "parse_override", "save_yaml", "type_name",
]
