"""The docs cannot drift from the code: every command README.md and docs/*.md show is checked.

- Every `imgcls train` command in a ```bash block runs with `--dry-run` (the config, the data, the
  model and one batch through it; nothing written), on a tiny image folder in place of the docs'
  own (my_images, PATH, train.txt, labels.csv) and the bundled digits in place of CIFAR, which
  would need a download; the `--resume` ones on a stopped run the test makes.
- Every other `imgcls ...` command, in a code block or an inline code span, parses with the
  command line's own parser: no unknown flag, no bad choice or value.
- The synopsis in docs/command-line.md names exactly the flags each command has, with their
  choices.
- Every link to a local file (and heading) resolves.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest
from conftest import run_cli

from imgcls import api
from imgcls.config import build_config
from imgcls.engine.trainer import Callback, Trainer

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SYNOPSIS_PAGE = ROOT / "docs" / "command-line.md"

# What a dry run cannot check here, and why; kept short on purpose (these still parse, below).
SKIPPED = {
    "vgg16_finetune": "downloads VGG-16's pretrained weights (and one batch takes seconds)",
    "--config finetune": "downloads resnet50's pretrained weights",
}

# Placeholders the docs use for values a parser checks (an int, a choice).
PARSE_PLACES = {"$SLURM_ARRAY_TASK_ID": "0", "MODE": "none", "N": "2"}

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

FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```", re.M | re.S)
SHELL_CUT = re.compile(r"\s(?:\|\|?|&&|;|>>?|<<?|2>)\s")


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced code block."""
    return [(lang, body) for lang, body in FENCE.findall(text)]


def _prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return FENCE.sub("", text)


def _imgcls_words(line: str) -> list[str] | None:
    """`imgcls COMMAND ...` as words, from one shell line: comments dropped, cut at pipes, `&&`,
    `;` and redirections; torchrun's `-m imgcls ...` counted too; None when there is none or the
    line needs a shell to mean anything (`$(...)`, backquotes)."""
    if "$(" in line or "`" in line:
        return None
    for segment in SHELL_CUT.split(line):
        try:
            words = shlex.split(segment, comments=True)
        except ValueError:
            return None
        if "imgcls" in words and words.index("imgcls") + 1 < len(words):
            return words[words.index("imgcls"):]
    return None


def shown_commands() -> list[tuple[str, str, bool]]:
    """Every `imgcls` command the pages show, as (page, command, runnable): runnable ones come
    from ```bash blocks and `$ ` lines of transcripts; the others are inline code spans and lines
    of other blocks. Synopsis lines (`[--option]` brackets) are left to the synopsis test."""
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for lang, body in _blocks(text):
            if lang == "python":
                continue
            for line in body.replace("\\\n", " ").splitlines():
                stripped = line.strip()
                runnable = lang in ("bash", "sh", "shell") or stripped.startswith("$ ")
                if not runnable and not stripped.startswith("imgcls "):
                    continue  # output, a listing or a tree that mentions a command
                if not runnable and "[" in stripped:
                    continue  # a synopsis line
                words = _imgcls_words(stripped.removeprefix("$ "))
                if words:
                    found.append((_name(page), shlex.join(words), runnable))
        for span in re.findall(r"`(imgcls [^`]+)`", _prose(text)):
            span = " ".join(span.split())
            if "[" in span or "..." in span:
                continue  # a synopsis, or a command with its middle left out
            words = _imgcls_words(span)
            if words:
                found.append((_name(page), shlex.join(words), False))
    return found


def train_commands() -> list[str]:
    """The runnable `imgcls train` commands the pages show."""
    return [cmd for _, cmd, runnable in shown_commands()
            if runnable and cmd.split()[:2] == ["imgcls", "train"]]


def _skip_reason(command: str) -> str | None:
    return next((why for what, why in SKIPPED.items() if what in command), None)


def _argv(command: str, folder: Path, list_file: Path, label_csv: Path) -> list[str]:
    """The command's arguments after `imgcls`, on the test's data."""
    places = {"my_images": str(folder), "PATH": str(folder), "train.txt": str(list_file),
              "labels.csv": str(label_csv),
              "/shared/my_images": str(folder), "cifar10": "digits", "cifar100": "digits"}
    argv = [places.get(word, word) for word in shlex.split(command)[1:]]
    # pretrained weights are downloads (or a file of the reader's): the rest is checked
    argv = ["model.pretrained=" if word.startswith("model.pretrained=") else word
            for word in argv]
    if "--data" not in argv:  # CIFAR-10 (the default, or a recipe's) needs a download
        argv += ["--data", "digits"]
    return [*argv, "--dry-run"]


def test_docs_show_train_commands_and_skip_few():
    commands = train_commands()
    assert len(commands) >= 15
    skipped = [c for c in commands if _skip_reason(c)]
    assert len(skipped) <= 2, skipped
    assert any("--resume" in c for c in commands)  # dry-run on a run of their own, below


def test_every_train_command_in_the_docs_runs(tmp_path, monkeypatch, capsys, make_image_folder,
                                              make_list_file, make_label_csv):
    monkeypatch.chdir(tmp_path)
    folder = make_image_folder(tmp_path / "my_images", per_class=6, size=32)
    list_file = make_list_file(tmp_path / "listed", per_class=6, size=32)
    label_csv = make_label_csv(tmp_path / "labelled", n=16, size=32)
    Path("my_nets.py").write_text(NET)
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "models.py").write_text(NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    Path("recipe.yaml").write_text("train: {epochs: 2}\n")
    failures = []
    for command in dict.fromkeys(train_commands()):  # each distinct command once
        if _skip_reason(command) or "--resume" in command:
            continue
        argv = _argv(command, folder, list_file, label_csv)
        code, out, err = run_cli(capsys, *argv)
        if code != 0 or "dry run: would train" not in out:
            failures.append(f"{command}\n  -> {' '.join(argv)}\n  {err.strip()[-400:]}")
    assert not failures, "\n".join(failures)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "labelled", "listed", "my_images", "my_nets.py", "mypkg", "recipe.yaml"]  # no run, cache
    assert not list(folder.rglob(".imgcls-cache"))


class _StopAfterFirstEpoch(Callback):
    def on_epoch_end(self, trainer: Trainer, metrics: dict) -> str | None:
        return "stopped for the test: one epoch of two saved"


def test_every_resume_command_in_the_docs_runs(tmp_path, capsys):
    # the run they continue: one epoch of two saved, as a stopped run leaves it
    cfg = build_config(overrides={"data.source": "digits", "model.name": "lenet",
                                  "train.epochs": 2, "log.progress": "off",
                                  "log.tensorboard": False, "log.output": str(tmp_path),
                                  "log.name": "run"})
    run = api.train(cfg, callbacks=[_StopAfterFirstEpoch()]).run_dir
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    commands = [c for c in dict.fromkeys(train_commands()) if "--resume" in c]
    for command in commands:
        words = shlex.split(command)[1:]
        where = words.index("--resume") + 1
        argv = [*words[:where], str(run), *words[where + 1:], "--dry-run"]
        code, out, err = run_cli(capsys, *argv)
        assert code == 0 and f"dry run: would resume {run} at epoch 2" in out, (command, err)
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # nothing written


class _ParseError(Exception):
    pass


def _raise(self, message):  # argparse.ArgumentParser.error, without the exit
    raise _ParseError(f"{self.prog}: {message}")


def _parse(parser: argparse.ArgumentParser, words: list[str]) -> None:
    """Parse `imgcls WORDS...` as `imgcls.cli.main.main` does, raising _ParseError."""
    from imgcls.cli.options import TRAIN_LIKE

    args, extra = parser.parse_known_args(words)
    leftovers = [x for x in extra if x.startswith("-") or args.command not in TRAIN_LIKE]
    if leftovers:
        raise _ParseError(f"unrecognized arguments: {' '.join(leftovers)}")


def test_every_imgcls_command_in_the_docs_parses(monkeypatch):
    from imgcls.cli.main import build_parser

    monkeypatch.setattr(argparse.ArgumentParser, "error", _raise)
    parser = build_parser()
    commands = shown_commands()
    assert len({cmd.split()[1] for _, cmd, _ in commands}) >= 12  # nearly every command shown
    failures = []
    for page, command, runnable in dict.fromkeys(commands):
        words = [PARSE_PLACES.get(w, w) for w in shlex.split(command)[1:]]
        try:
            _parse(parser, words)
        except _ParseError as exc:
            # an inline span may name part of a command (`imgcls evaluate --split test`,
            # `imgcls train --resume`): what it names must exist, what it leaves out may be
            # required
            partial = "required" in str(exc) or (
                "expected one argument" in str(exc) and words[-1].startswith("--"))
            if runnable or not partial:
                failures.append(f"{page}: {command}\n  {exc}")
        except SystemExit as exc:  # --help, --version
            if exc.code:
                failures.append(f"{page}: {command}\n  exit {exc.code}")
    assert not failures, "\n".join(failures)


def _synopsis() -> list[str]:
    """docs/command-line.md's synopsis: one entry per `imgcls COMMAND`, continuation lines
    joined."""
    for lang, body in _blocks(SYNOPSIS_PAGE.read_text(encoding="utf-8")):
        if lang == "" and body.startswith("imgcls ") and "[" in body:
            entries: list[str] = []
            for line in body.splitlines():
                if line.startswith("imgcls "):
                    entries.append(line)
                elif line.strip():
                    entries[-1] += " " + line.strip()
            return entries
    raise AssertionError(f"no synopsis block in {SYNOPSIS_PAGE}")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_the_synopsis_names_every_flag_of_every_command_and_no_other():
    """Both ways: a flag the synopsis names exists, with the choices it lists; a flag a command
    has is in its synopsis (`[CODE]`: --model-code and --trust-code; `[the options of train]`:
    those of train that the command has)."""
    from imgcls.cli.main import build_parser

    commands = _subparsers(build_parser())
    named: dict[str, set[str]] = {}
    failures = []
    for entry in _synopsis():
        command = entry.split()[1]
        if command not in commands:
            failures.append(f"`imgcls {command}`: no such command")
            continue
        options = {o: a for a in commands[command]._actions for o in a.option_strings}
        flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", entry))
        if "[CODE]" in entry:
            flags |= {"--model-code", "--trust-code"}
        if "[the options of train]" in entry:
            train = {o for a in commands["train"]._actions for o in a.option_strings}
            flags |= train & set(options)
        for flag in sorted(flags - set(options)):
            failures.append(f"`imgcls {command}` has no {flag}")
        for flag, listed in re.findall(r"(--[a-z][a-z0-9-]*)[ =]([\w.]+(?:\|[\w.]+)+)", entry):
            choices = getattr(options.get(flag), "choices", None)
            if choices is not None and set(listed.split("|")) != set(choices):
                failures.append(f"`imgcls {command} {flag}` lists {listed.split('|')}, "
                                f"the parser has {sorted(choices)}")
        named.setdefault(command, set()).update(flags)
    for command, sub in commands.items():
        has = {o for a in sub._actions for o in a.option_strings if o.startswith("--")}
        for flag in sorted(has - named.get(command, set()) - {"--help"}):
            failures.append(f"the synopsis of `imgcls {command}` lacks {flag}")
    assert not failures, "\n".join(failures)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = page.read_text(encoding="utf-8")
    seen: dict[str, int] = {}
    anchors = set(re.findall(r'<a id="([^"]+)"', text))
    for heading in re.findall(r"^#{1,6} (.+)$", _prose(text), re.M):
        slug = _slug(heading)
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_local_link_resolves(page):
    links = re.findall(r"\]\(([^)\s]+)\)", _prose(page.read_text(encoding="utf-8")))
    broken = []
    for link in links:
        if re.match(r"[a-z]+:", link):
            continue  # https:, mailto:
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link}: no file {target}")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(f"{link}: no heading #{anchor} in {_name(target)}")
    assert not broken, f"{_name(page)}:\n" + "\n".join(broken)


def test_every_docs_page_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    unlinked = [_name(p) for p in PAGES[1:]
                if p.name != "README.md" and f"]({_name(p)})" not in readme]
    assert not unlinked, f"README.md's Documentation list lacks {unlinked}"


def test_the_architecture_page_lists_the_enforced_layer_order():
    """docs/architecture.md's "Layer order" is tests/test_layers.py's LAYERS, in order."""
    from test_layers import LAYERS

    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## Layer order", 1)[1].split("\n## ", 1)[0]
    items = re.findall(r"^\d+\. (.*(?:\n   .*)*)", section, re.M)
    expected = [layer - {"imgcls"} for layer in LAYERS]
    assert len(items) == len(expected), (items, expected)
    for item, layer in zip(items, expected, strict=True):
        # the layer's names; after them an item may say what it uses (`legacy` for inference)
        head = (item.split(":", 1)[1] if item.startswith("the foundation")
                else re.split(r"[:(]", item, maxsplit=1)[0])
        assert set(re.findall(r"`(\w+)`", head)) == layer, (item, layer)
