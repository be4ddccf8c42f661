"""The schema is the one place a key is declared: validation, its messages, the reference
(docs/config.md, --help-keys), the infrastructure keys and the memory loader's allow-list all
follow from it."""

from __future__ import annotations

import math
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from imgcls.config import (
    INFRA_KEYS,
    KEYS,
    MEMORY_TRANSFORM_KEYS,
    SECTIONS,
    Config,
    build_config,
    type_name,
)
from imgcls.config.reference import markdown
from imgcls.errors import ImgclsError
from imgcls.experiments import plan
from imgcls.experiments.search_space import parse_space

ROOT = Path(__file__).resolve().parents[2]
BOUNDED = [name for name, info in KEYS.items() if info.bounds]
CHOICE_KEYS = [name for name, info in KEYS.items()
               if typing.get_origin(info.annotation) is typing.Literal]


def test_docs_config_md_is_what_the_schema_generates():
    page = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    assert page == markdown(), "regenerate it: python -m imgcls.config > docs/config.md"


def test_the_generator_command_prints_the_page():
    out = subprocess.run([sys.executable, "-m", "imgcls.config"], capture_output=True,
                         text=True, check=True)
    assert out.stdout == markdown() and not out.stderr


def test_every_key_is_declared_with_help_and_a_default():
    assert set(KEYS) == {f"{s}.{k}" for s, values in Config().to_dict().items() for k in values}
    for name, info in KEYS.items():
        assert info.help.strip(), f"{name} has no help text"
        section, _, key = name.partition(".")
        assert getattr(getattr(Config(), section), key) == info.default


def test_help_keys_lists_every_key_with_its_help():
    out = subprocess.run([sys.executable, "-m", "imgcls", "train", "--help-keys"],
                         capture_output=True, text=True, check=True).stdout
    for name in KEYS:
        assert f"\n{name} = " in f"\n{out}", name
    assert "decompression-bomb limit" in out  # a help text, not just the names
    assert "[infra]" in out


def _just_outside(info) -> float:
    b = info.bounds
    if "ge" in b:
        return b["ge"] - 1
    if "gt" in b:
        return b["gt"] - (1 if b["gt"] >= 1 else 0.5)
    return (b.get("le") if "le" in b else b["lt"]) + 1


@pytest.mark.parametrize("name", BOUNDED)
def test_every_range_is_enforced_with_a_message_naming_the_key(name):
    info = KEYS[name]
    value = _just_outside(info)
    if "int" in type_name(info.annotation):
        value = math.floor(value)
    with pytest.raises(ImgclsError) as caught:
        build_config(overrides={name: value})
    message = str(caught.value)
    assert message.startswith(f"config key {name} = ") and info.rule() in message
    assert "\n" not in message


@pytest.mark.parametrize("name", CHOICE_KEYS)
def test_every_choice_key_lists_its_choices(name):
    with pytest.raises(ImgclsError, match=f"config key {name} = 'nope' is invalid: expected one "
                                          "of"):
        build_config(overrides={name: "nope"})
    for choice in typing.get_args(KEYS[name].annotation):
        assert str(choice) in type_name(KEYS[name].annotation)


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("train.epochs", True, "config key train.epochs: expected int, got True"),
    ("optim.lr", True, "config key optim.lr: expected float, got True"),
    ("optim.lr", float("inf"), "config key optim.lr = inf is invalid: must be a finite number"),
    ("log.tensorboard", "yes", "config key log.tensorboard: expected bool, got 'yes'"),
    ("transforms.crop_padding", ["a"], "config key transforms.crop_padding: expected a list of "
                                       "int, got ['a']"),
    ("loader.eval_batch_size", 0, "config key loader.eval_batch_size = 0 is invalid: must be "
                                  ">= 1"),
])
def test_type_errors_are_one_line_naming_the_key(name, value, expected):
    with pytest.raises(ImgclsError) as caught:
        build_config(overrides={name: value})
    assert str(caught.value) == expected


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ImgclsError, match=r"unknown config key 'optim\.lrr'; did you mean "
                                          r"optim\.lr"):
        build_config(overrides={"optim.lrr": 0.1})


def test_infra_keys_come_from_the_schema():
    assert plan.INFRA_KEYS is INFRA_KEYS
    assert {"train.device", "loader.num_workers", "log.output"} <= INFRA_KEYS
    assert not {"optim.lr", "train.epochs", "data.source"} & INFRA_KEYS
    assert all(KEYS[name].infra for name in INFRA_KEYS)


@pytest.mark.parametrize("name", ["loader.num_workers", "train.compile", "log.name"])
def test_a_search_never_varies_an_infrastructure_key(name):
    with pytest.raises(ImgclsError, match=f"{name} cannot be searched: it says where or how "
                                          "fast runs go"):
        parse_space({name: {"choice": [KEYS[name].default, KEYS[name].default]}},
                    build_config())


def test_memory_transform_keys_are_transforms_keys():
    assert MEMORY_TRANSFORM_KEYS
    assert all(name.startswith("transforms.") for name in MEMORY_TRANSFORM_KEYS)
    assert {"transforms.hflip", "transforms.cutout"} <= MEMORY_TRANSFORM_KEYS
    assert "transforms.rotation" not in MEMORY_TRANSFORM_KEYS


def test_sections_are_frozen_and_validated_on_replace():
    import dataclasses

    cfg = build_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optim.lr = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="greater than 0"):
        dataclasses.replace(cfg.optim, lr=-1.0)
    assert set(SECTIONS) == set(Config().to_dict())


# A value in use for each transforms key the memory loader does not reproduce; a new transforms
# key must be added here (the first test fails until it is), and is then checked to send the run
# to the DataLoader rather than be dropped.
IN_USE = {
    "transforms.resize": 40, "transforms.center_crop": True,
    "transforms.random_resized_crop": True, "transforms.rotation": 10.0,
    "transforms.color_jitter": [0.1, 0.1, 0.1, 0.1], "transforms.grayscale": 0.5,
    "transforms.affine_degrees": 5.0, "transforms.affine_translate": 0.1,
    "transforms.affine_scale": [0.9, 1.1],
}


def test_every_transforms_key_is_allowed_or_has_an_example():
    transforms = {name for name in KEYS if name.startswith("transforms.")}
    assert transforms - MEMORY_TRANSFORM_KEYS == set(IN_USE)


@pytest.mark.parametrize("name", sorted(IN_USE))
def test_a_key_outside_the_allow_list_sends_the_run_to_the_dataloader(name):
    from imgcls.data.memory import unsupported_transforms

    cfg = build_config(overrides={"transforms.preset": "none", name: IN_USE[name]})
    assert unsupported_transforms(cfg.transforms, 32, explicit=cfg.explicit) == [name]
    assert unsupported_transforms(build_config(overrides={"transforms.preset": "none"})
                                  .transforms, 32) == []
