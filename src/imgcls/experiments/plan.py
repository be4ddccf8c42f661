"""An experiment folder: the runs it holds (one per fold, or one per seed), how each differs from
the shared recipe, and ``experiment.json``, which records both. A rerun of the command, each job
of a cluster array and ``--summarize`` all find the same folder: its default name is a digest
of the recipe, not a timestamp that would differ from one job to the next."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import imgcls
from imgcls.config import INFRA_KEYS, Config, build_config, flatten
from imgcls.engine.setup import with_data_monitor
from imgcls.errors import ImgclsError
from imgcls.files import atomic_write_text

VERSION = 1
FILE = "experiment.json"
KINDS = {"cv": "fold", "repeat": "seed"}  # kind -> what one of its runs is called


@dataclass(frozen=True)
class Member:
    """One run of an experiment: fold ``index`` of a cross-validation, or seed ``index``."""

    index: int
    name: str  # its folder: fold-0, fold-1, ... or seed-0, seed-1, ... (the seed's value)
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class Experiment:
    """``path/experiment.json`` and the runs ``path/<member>`` it lists."""

    path: Path
    kind: str  # cv | repeat
    count: int  # folds, or seeds
    config: dict[str, Any]  # the shared recipe: Config.to_dict() of the starting command
    command: str = ""
    created: str = ""

    @property
    def monitor(self) -> str:
        return str(self.config["train"]["monitor"])

    @property
    def members(self) -> list[Member]:
        if self.kind == "cv":
            return [Member(i, f"fold-{i}", {"data.folds": self.count, "data.fold": i})
                    for i in range(self.count)]
        seed = int(self.config["train"]["seed"])
        split = self.config["data"].get("split_seed")
        # The split stays that of the first seed: the spread is the training's, over the
        # same validation (and carved test) images.
        split = seed if split is None else int(split)
        return [Member(i, f"seed-{seed + i}", {"train.seed": seed + i, "data.split_seed": split})
                for i in range(self.count)]

    def member(self, index: int) -> Member:
        """``--only I``: member ``index`` (0-based), range-checked."""
        if not 0 <= index < self.count:
            what = KINDS[self.kind]
            raise ImgclsError(f"--only {index}: this {self.kind} has {self.count} {what}s, "
                              f"numbered 0 to {self.count - 1}")
        return self.members[index]

    def run_dir(self, member: Member) -> Path:
        return self.path / member.name

    def member_config(self, cfg: Config, member: Member) -> Config:
        """``cfg`` (the recipe, with this command's devices and paths) as ``member`` runs it."""
        where = {"log.output": str(self.path), "log.name": member.name}
        return build_config(cfg, {**member.overrides, **where})

    def to_json(self) -> str:
        body = {"version": VERSION, "kind": self.kind, "count": self.count,
                "monitor": self.monitor, "command": self.command, "created": self.created,
                "imgcls": imgcls.__version__,
                "members": [{"index": m.index, "name": m.name, "overrides": m.overrides}
                            for m in self.members],
                "config": self.config}
        return json.dumps(body, indent=2) + "\n"


def plan_experiment(kind: str, count: int, cfg: Config, command: str = "") -> Experiment:
    """The experiment ``cfg`` describes: ``log.output/log.name``, or ``log.output/<kind>-<model>-
    <digest of the recipe>`` when no name is given. Nothing is written."""
    if kind not in KINDS:
        raise ImgclsError(f"unknown experiment kind {kind!r}; expected cv or repeat")
    flag = "--folds" if kind == "cv" else "--seeds"
    if count < (2 if kind == "cv" else 1):
        raise ImgclsError(f"{flag} {count}: expected at least {2 if kind == 'cv' else 1}")
    if kind == "cv" and (cfg.data.folds or cfg.data.fold):
        raise ImgclsError("imgcls cv sets data.folds and data.fold itself; leave them out and "
                          "use --folds K (and --only I for one fold)")
    cfg = with_data_monitor(cfg)  # the summary compares the runs on what they watched
    name = cfg.log.name or f"{kind}-{_safe(cfg.model.name)}-{_digest(kind, count, cfg)}"
    return Experiment(Path(cfg.log.output) / name, kind, count, cfg.to_dict(), command,
                      f"{datetime.now():%Y-%m-%dT%H:%M:%S}")


def is_experiment(path: str | Path) -> bool:
    return (Path(path) / FILE).is_file()


def load_experiment(path: str | Path) -> Experiment:
    """The experiment recorded in ``path/experiment.json``."""
    path = Path(path)
    try:
        data = json.loads((path / FILE).read_text(encoding="utf-8"))
        if data.get("kind") not in KINDS:
            raise ImgclsError(f"{path / FILE} records an experiment of kind "
                              f"{data.get('kind')!r}; this reads cv and repeat experiments")
        return Experiment(path, data["kind"], int(data["count"]), data["config"],
                          data.get("command", ""), data.get("created", ""))
    except FileNotFoundError:
        raise ImgclsError(f"{path} is not an experiment folder: no {FILE} in it (start one "
                          "with `imgcls cv` or `imgcls repeat`)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ImgclsError(f"cannot read {path / FILE}: {exc}") from None


def open_or_create(planned: Experiment) -> Experiment:
    """The experiment in ``planned.path``: created when new, else checked to be the same
    recipe (an option changed under the same --name would mix two experiments)."""
    if not is_experiment(planned.path):
        try:
            planned.path.mkdir(parents=True, exist_ok=True)
            # atomic: the jobs of an array may all create it at once, with the same content
            atomic_write_text(planned.path / FILE, planned.to_json())
        except OSError as exc:
            raise ImgclsError(f"cannot write the experiment folder {planned.path}: "
                              f"{exc.strerror or exc}") from None
        return planned
    saved = load_experiment(planned.path)
    check_same(saved, planned)
    return saved


def check_same(saved: Experiment, planned: Experiment) -> None:
    """One line naming the first difference between the saved recipe and this command's."""
    where = f"experiment folder {saved.path} was started"
    if (saved.kind, saved.count) != (planned.kind, planned.count):
        raise ImgclsError(f"{where} as `{saved.kind}` with {saved.count} "
                          f"{KINDS[saved.kind]}s, not `{planned.kind}` with {planned.count}; "
                          "choose another --name")
    old, new = _identity(saved.config), _identity(planned.config)
    for key in sorted(old.keys() | new.keys()):
        if old.get(key) != new.get(key):
            raise ImgclsError(f"{where} with {key}={old.get(key)!r}, this command has "
                              f"{new.get(key)!r}; rerun it with the same options, or choose "
                              "another --name")


def _identity(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in flatten(config).items() if k not in INFRA_KEYS}


def _digest(kind: str, count: int, cfg: Config) -> str:
    text = json.dumps([kind, count, _identity(cfg.to_dict())], sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]


def _safe(name: str) -> str:
    """A model name as part of a folder name: ``FILE.py:CLASS`` and ``MODULE:CLASS`` by the
    class's name (the file's path would put slashes in it)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name.rsplit(":", 1)[-1])[:40] or "model"
