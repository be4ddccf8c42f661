"""The search space of ``imgcls tune``: a YAML file mapping config keys to distributions.

    optim.lr: {log_uniform: [1e-3, 1]}        # a float, uniform in log space
    optim.momentum: {uniform: [0.8, 0.99]}    # a float
    loader.batch_size: {int: [32, 256], step: 32}   # log_int: [low, high] in log space
    optim.name: {choice: [sgd, adamw]}        # `categorical` means the same

Keys are written dotted or nested under their section, as in a recipe. Everything is checked
before a trial runs: each key must be a config key that a trial may change, each range must be
well formed, and each bound or choice must be a value the config accepts (``optim.lr`` must be
> 0), so a bad space fails with one line instead of as a failed trial hours later.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgcls.config import INFRA_KEYS, KEYS, SECTIONS, Config, build_config, load_yaml
from imgcls.errors import ImgclsError
from imgcls.registry import close_matches

FLOAT_KINDS = ("uniform", "log_uniform")
INT_KINDS = ("int", "log_int")
KINDS = (*FLOAT_KINDS, *INT_KINDS, "choice", "categorical")
# What every trial is judged on; and the infrastructure keys (config.INFRA_KEYS: where and how
# fast a trial runs, not what it learns): a study varies neither.
FIXED_KEYS = {"train.monitor": "it is the objective every trial is compared on"}
_USAGE = ("{uniform: [low, high]}, {log_uniform: [low, high]}, {int: [low, high]} (optional "
          "step: N), {log_int: [low, high]} or {choice: [a, b, ...]}")


@dataclass(frozen=True)
class Param:
    """One searched config key and its distribution (``kind`` is never ``categorical``)."""

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    step: int | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """Draw this key's value from an Optuna trial (named by the config key)."""
        if self.kind in FLOAT_KINDS:
            return trial.suggest_float(self.key, self.low, self.high,
                                       log=self.kind == "log_uniform")
        if self.kind in INT_KINDS:
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1,
                                     log=self.kind == "log_int")
        return trial.suggest_categorical(self.key, list(self.choices))

    def spec(self) -> dict[str, Any]:
        """The distribution as the file writes it, normalised: what a study remembers."""
        if self.kind == "choice":
            return {"choice": list(self.choices)}
        spec: dict[str, Any] = {self.kind: [self.low, self.high]}
        if self.step is not None:
            spec["step"] = self.step
        return spec

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.key} one of {list(self.choices)}"
        step = f" step {self.step}" if self.step else ""
        return f"{self.key} {self.kind.replace('_', '-')} [{self.low:g}, {self.high:g}]{step}"


def load_space(path: str | Path, base: Config) -> list[Param]:
    """Read and check a search-space file against ``base`` (the config every trial starts
    from); one-line errors name the file and the key."""
    path = Path(path)
    try:
        data = load_yaml(path)
    except ImgclsError as exc:
        raise ImgclsError(f"--space: {exc}") from None
    return parse_space(data, base, where=f"space file {path}")


def parse_space(data: dict[str, Any], base: Config, where: str = "space") -> list[Param]:
    """``{"optim.lr": {"log_uniform": [1e-3, 1]}, ...}`` -> checked :class:`Param` s."""
    params = [_parse_entry(key, spec, base, where) for key, spec in _entries(data, where)]
    if not params:
        raise ImgclsError(f"{where}: no keys to search; write e.g. "
                          "`optim.lr: {log_uniform: [1e-3, 1]}`")
    _check_values(params, base, where)
    return params


def _check_values(params: list[Param], base: Config, where: str) -> None:
    """Every bound and choice must be a value the config accepts (lr > 0, fractions below 1,
    known names), next to the other searched keys' first values: keys that depend on each
    other (``optim.name`` and ``optim.nesterov``) are judged as the space sets them."""
    firsts = {p.key: p.choices[0] if p.choices else p.low for p in params}
    for param in params:
        for value in param.choices or (param.low, param.high):
            try:
                build_config(base, {**firsts, param.key: value})
            except ImgclsError as exc:
                raise ImgclsError(f"{where}: {exc}") from None


def _entries(data: dict[str, Any], where: str) -> list[tuple[str, Any]]:
    """Dotted keys as they are; ``optim: {lr: ...}`` (a recipe's nesting) becomes ``optim.lr``."""
    out: list[tuple[str, Any]] = []
    for key, value in data.items():
        key = str(key)
        if "." not in key and key in SECTIONS and isinstance(value, dict):
            out += [(f"{key}.{name}", spec) for name, spec in value.items()]
        else:
            out.append((key, value))
    keys = [k for k, _ in out]
    if len(set(keys)) != len(keys):
        twice = next(k for k in keys if keys.count(k) > 1)
        raise ImgclsError(f"{where}: {twice} is given twice")
    return out


def _hint(key: str) -> Any | None:
    if key not in KEYS:
        return None
    section, _, name = key.partition(".")
    return typing.get_type_hints(SECTIONS[section])[name]


def _takes(hint: Any, kind: type) -> bool:
    return hint is kind or kind in typing.get_args(hint)


def _parse_entry(key: str, spec: Any, base: Config, where: str) -> Param:
    hint = _hint(key)
    if hint is None:
        known = [f"{s}.{n}" for s, values in base.to_dict().items() for n in values]
        matches = close_matches(key, known)
        did = f"; did you mean {', '.join(matches)}?" if matches else ""
        raise ImgclsError(f"{where}: {key!r} is not a config key{did}")
    if key in INFRA_KEYS or key in FIXED_KEYS:
        why = FIXED_KEYS.get(key, "it says where or how fast runs go, not what they learn")
        raise ImgclsError(f"{where}: {key} cannot be searched: {why}")
    kinds = [k for k in KINDS if isinstance(spec, dict) and k in spec]
    extra = set(spec) - {*kinds, "step"} if isinstance(spec, dict) else set()
    if len(kinds) != 1 or extra or ("step" in spec and kinds[0] != "int"):
        raise ImgclsError(f"{where}: {key}: expected one of {_USAGE}, got {spec!r} (a fixed "
                          "value goes on the command line as KEY=VALUE)")
    kind = "choice" if kinds[0] == "categorical" else kinds[0]
    if kind == "choice":
        return _choice(key, spec[kinds[0]], where)
    return _range(key, kind, spec[kind], spec.get("step"), hint, where)


def _choice(key: str, values: Any, where: str) -> Param:
    if not isinstance(values, list) or not values:
        raise ImgclsError(f"{where}: {key}: choice needs a non-empty list, got {values!r}")
    for value in values:  # what Optuna can store and compare
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise ImgclsError(f"{where}: {key}: choice {value!r} is not a single value "
                              "(a number, a string, true/false or null)")
    if len(set(map(repr, values))) != len(values):
        raise ImgclsError(f"{where}: {key}: choice lists a value twice: {values!r}")
    return Param(key, "choice", choices=tuple(values))


def _number(value: Any) -> float | None:
    """YAML reads ``1e-3`` (no dot) as a string: take it as the number it means."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _range(key: str, kind: str, bounds: Any, step: Any, hint: Any, where: str) -> Param:
    is_int = kind in INT_KINDS
    if not (_takes(hint, int) or _takes(hint, float)):
        raise ImgclsError(f"{where}: {key} is not a number; use {{choice: [...]}}")
    if not is_int and not _takes(hint, float):
        raise ImgclsError(f"{where}: {key} takes an integer; use {{int: [low, high]}} or "
                          "{choice: [...]}")
    pair = [_number(b) for b in bounds] if isinstance(bounds, list) else []
    low, high = (pair + [None, None])[:2] if len(pair) == 2 else (None, None)
    need = "two integers" if is_int else "two numbers"
    if low is None or high is None or (is_int and not (low.is_integer() and high.is_integer())):
        raise ImgclsError(f"{where}: {key}: {kind} needs [low, high], {need}, got {bounds!r}")
    if not low < high:
        raise ImgclsError(f"{where}: {key}: {kind} range {bounds!r} is empty: need low < high")
    if kind.startswith("log") and low <= 0:
        raise ImgclsError(f"{where}: {key}: {kind} range {bounds!r} must be above 0 (a log "
                          "scale has no 0)")
    if not is_int:
        return Param(key, kind, low, high)
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 1
                             or (high - low) % step):
        raise ImgclsError(f"{where}: {key}: step {step!r} must be a positive integer that "
                          f"divides high - low = {int(high - low)}")
    return Param(key, kind, int(low), int(high), step)
