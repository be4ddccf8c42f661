"""Every `imgcls train` command the README shows runs: each is checked with `--dry-run` (the
config, the data, the model and one batch through it; nothing written), on a tiny image folder
in place of the README's own (my_images, PATH, train.txt) and the bundled digits in place of
CIFAR, which would need a download."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]

# What a dry run cannot check here, and why; kept short on purpose.
SKIPPED = {
    "--resume": "continues a run folder the command before it made",
    "vgg16_finetune": "downloads VGG-16's pretrained weights (and one batch takes seconds)",
}

NET = """\
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes=10, in_channels=3, width=8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x):
        return self.body(x)


ResNetish = Net
"""


def readme_train_commands() -> list[str]:
    """The `imgcls train` commands in README.md's ```bash blocks, comments and line
    continuations removed; torchrun's `-m imgcls train ...` counted as `imgcls train ...`."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if "train" not in words or "imgcls" not in words:
                continue
            at = words.index("imgcls")
            if words[at + 1:at + 2] == ["train"]:
                commands.append(shlex.join(words[at:]))
    return commands


def _skip_reason(command: str) -> str | None:
    return next((why for what, why in SKIPPED.items() if what in command), None)


def _argv(command: str, folder: Path, list_file: Path) -> list[str]:
    """The command's arguments after `imgcls`, on the test's data."""
    places = {"my_images": str(folder), "PATH": str(folder), "train.txt": str(list_file),
              "cifar10": "digits", "cifar100": "digits"}
    argv = [places.get(word, word) for word in shlex.split(command)[1:]]
    # pretrained weights are downloads (or a file of the reader's): the rest is checked
    argv = ["model.pretrained=" if word.startswith("model.pretrained=") else word
            for word in argv]
    if "--data" not in argv:  # CIFAR-10 (the default, or a recipe's) needs a download
        argv += ["--data", "digits"]
    return [*argv, "--dry-run"]


def test_readme_shows_train_commands_and_skips_few():
    commands = readme_train_commands()
    assert len(commands) >= 15
    skipped = [c for c in commands if _skip_reason(c)]
    assert len(skipped) <= 3, skipped


def test_every_readme_train_command_runs(tmp_path, monkeypatch, capsys, make_image_folder,
                                         make_list_file):
    monkeypatch.chdir(tmp_path)
    folder = make_image_folder(tmp_path / "my_images", per_class=6, size=32)
    list_file = make_list_file(tmp_path / "listed", per_class=6, size=32)
    Path("my_nets.py").write_text(NET)
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "models.py").write_text(NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    Path("recipe.yaml").write_text("train: {epochs: 2}\n")
    failures = []
    for command in readme_train_commands():
        if _skip_reason(command):
            continue
        argv = _argv(command, folder, list_file)
        code, out, err = run_cli(capsys, *argv)
        if code != 0 or "dry run: would train" not in out:
            failures.append(f"{command}\n  -> {' '.join(argv)}\n  {err.strip()[-400:]}")
    assert not failures, "\n".join(failures)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "listed", "my_images", "my_nets.py", "mypkg", "recipe.yaml"]  # no run folder, no cache
    assert not list(folder.rglob(".imgcls-cache"))
