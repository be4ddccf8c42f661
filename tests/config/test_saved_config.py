"""config.yaml records what the run resolved (the loader, preset, normalisation, amp, device)
beside what was asked, and still reads back as the run's settings."""

from __future__ import annotations

import yaml
from conftest import run_cli

from imgcls import runtime
from imgcls.config import build_config, load_yaml


def test_config_yaml_records_what_auto_became(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--data", "digits", "--epochs", "1", "--output",
                           str(tmp_path), "--name", "r", "log.progress=off",
                           "log.tensorboard=false")
    assert code == 0, err
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert saved["data"]["loader"] == "auto" and saved["train"]["amp"] == "auto"
    resolved = saved["resolved"]
    assert resolved["data.loader"] == "memory"  # the digits fit in memory
    # auto: bf16 on a CPU with native bfloat16 (runtime.native_bf16), else fp32
    assert resolved["train.amp"] == ("bf16" if runtime.native_bf16() else "off")
    assert resolved["train.device"] == "cpu"
    assert resolved["transforms.preset"] == "digits" and resolved["transforms.hflip"] == 0.0
    assert len(resolved["transforms.mean"]) == 3 and min(resolved["transforms.std"]) > 0
    # read back (as --config, or a run started over) the record is not a setting
    again = build_config(load_yaml(tmp_path / "r" / "config.yaml"))
    assert again.data.loader == "auto" and again.transforms.preset == "digits"
