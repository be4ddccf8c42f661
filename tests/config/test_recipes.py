"""The bundled recipes as a user meets them: found by name from the installed package, listed by
`imgcls recipes`, and `imgcls train --print-config` showing exactly the config a run would use."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
import yaml
from conftest import assert_one_line_error, run_cli

from imgcls import recipes
from imgcls.config import build_config, load_yaml
from imgcls.runs.record import CheckpointRecord

ROOT = Path(__file__).resolve().parents[2]
NAMES = recipes.names()
FAST = ["--model", "lenet", "--batch-size", "16", "sched.warmup_epochs=0", "log.progress=off"]






def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and mtime: to prove nothing was written."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- the package's recipes


def test_package_resources_hold_the_recipes():
    # What a wheel install sees: package data, not the repository's configs/ folder.
    in_package = {p.name for p in resources.files("imgcls.recipes").iterdir()
                  if p.name.endswith(".yaml")}
    assert in_package == {f"{name}.yaml" for name in NAMES}
    assert {"fast", "fast_small", "simple_v3_seed", "lenet_seed"} <= set(NAMES)
    # configs/ in the repository is the same folder, so `--config configs/x.yaml` keeps working
    assert {p.name for p in (ROOT / "configs").glob("*.yaml")} == in_package


@pytest.mark.parametrize("name", NAMES)
def test_every_recipe_resolves_by_name_and_builds(name):
    path = recipes.find(name)
    assert path == recipes.find(f"{name}.yaml") == recipes.folder() / f"{name}.yaml"
    build_config(load_yaml(path))  # valid: every key known, every value allowed
    # the header is parsed, not guessed: line 1 the purpose, then a `# measured:` line
    lines = path.read_text(encoding="utf-8").splitlines()
    recipe = recipes.describe(name)
    assert recipe.purpose and lines[0] == f"# {recipe.purpose}"
    assert f"# measured: {recipe.measured}" in lines[:5] and recipe.measured


def test_recipes_command_lists_every_recipe_with_its_purpose(capsys):
    code, out, err = run_cli(capsys, "recipes")
    assert code == 0, err
    for name in NAMES:
        recipe = recipes.describe(name)
        assert f"{name}  " in out and recipe.purpose in out
        assert f"measured: {recipe.measured}" in out
    first = {line.split()[0] for line in out.splitlines() if line and not line[0].isspace()}
    assert set(NAMES) <= first


# ---------------------------------------------------------------- --config NAME or a path


def _printed(capsys, *argv: str):
    code, out, err = run_cli(capsys, "train", *argv, "--print-config")
    assert code == 0, err
    return build_config(yaml.safe_load(out))


def test_name_with_or_without_suffix_and_a_path_all_find_the_recipe(capsys):
    by_name = _printed(capsys, "--config", "fast_small")
    assert by_name.model.name == "fastnet_s"
    assert _printed(capsys, "--config", "fast_small.yaml") == by_name
    assert _printed(capsys, "--config", str(ROOT / "configs" / "fast_small.yaml")) == by_name


def test_an_existing_file_wins_over_a_recipe_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("fast_small.yaml").write_text("train: {epochs: 3}\n")
    cfg = _printed(capsys, "--config", "fast_small.yaml")
    assert cfg.train.epochs == 3 and cfg.model.name != "fastnet_s"
    assert _printed(capsys, "--config", "fast_small").model.name == "fastnet_s"  # no file


@pytest.mark.parametrize("command", ["train", "lr-find"])
def test_unknown_recipe_is_one_line_with_a_close_match(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, command, "--config", "fsat_small")
    assert_one_line_error(code, err, "'fsat_small'", "did you mean fast_small?", *NAMES)
    code, _, err = run_cli(capsys, command, "--config", str(tmp_path / "none.yaml"))
    assert_one_line_error(code, err, "none.yaml", "simple_v3_seed")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- --print-config


def test_print_config_is_the_resolved_config_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "train", "--config", "fast_small", "--epochs", "3",
                          "optim.lr=0.5", "--output", "runs", "--print-config")
    assert code == 0, err
    printed = build_config(yaml.safe_load(out))
    # defaults < recipe < flags < KEY=VALUE, as a run would build it
    expected = build_config(load_yaml(recipes.find("fast_small")),
                            {"train.epochs": 3, "optim.lr": 0.5, "log.output": "runs"})
    assert printed == expected
    assert printed.model.name == "fastnet_s" and printed.optim.momentum == 0.85
    assert list(tmp_path.iterdir()) == []  # no run folder, no data download, no cache


def test_print_config_shows_what_the_data_source_implies(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert _printed(capsys, "--data", "digits").transforms.preset == "digits"
    assert _printed(capsys, "--data", "digits", "transforms.preset=none").transforms.preset \
        == "none"
    # --nproc launches nothing when only printing
    assert _printed(capsys, "--config", "lenet_seed", "--nproc", "2").model.name == "lenet"
    assert list(tmp_path.iterdir()) == []


def test_print_config_with_resume(tmp_path, make_image_folder, capsys):
    data = make_image_folder(tmp_path / "imgs", per_class=6)
    code, _, err = run_cli(capsys, "train", "--data", str(data), "--epochs", "1", *FAST,
                        "--output", str(tmp_path / "runs"), "--name", "r")
    assert code == 0, err
    run = tmp_path / "runs" / "r"
    before = _tree(tmp_path)
    printed = _printed(capsys, "--resume", str(run), "--epochs", "4", "optim.lr=0.02")
    saved = CheckpointRecord.load(run / "checkpoints" / "last.pt").config
    assert printed == build_config(saved, {"train.epochs": 4, "optim.lr": 0.02})
    assert printed.model.name == "lenet" and printed.data.source == str(data)
    assert _tree(tmp_path) == before
