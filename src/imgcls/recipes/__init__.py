"""The bundled recipes: ``NAME.yaml`` files shipped inside the package, so that a wheel install
has them too (``imgcls train --config fast_small``). The repository's ``configs/`` links here.

Each file opens with a header that ``imgcls recipes`` reads (parsed, never guessed)::

    # <what the recipe is for, one line>
    # measured: <the figure imgcls measured with it, or "not measured yet">

>>> find("fast_small").name, find("fast_small.yaml").name
('fast_small.yaml', 'fast_small.yaml')
>>> describe("lenet_seed").measured
'not measured yet'
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from imgcls.errors import ImgclsError
from imgcls.registry import close_matches

SUFFIX = ".yaml"
MEASURED = "# measured:"


@dataclass(frozen=True)
class Recipe:
    """One bundled recipe: its name (the file's stem), file, and header lines."""

    name: str
    path: Path
    purpose: str  # "" when the file has no header comment
    measured: str


def folder() -> Path:
    """Where the bundled recipes are."""
    # A regular package on disk (installed from a wheel or editable): files() is a real folder,
    # and load_yaml and the error messages want a Path.
    return Path(str(resources.files(__name__)))


def names() -> list[str]:
    """The bundled recipes' names, sorted."""
    return sorted(p.stem for p in folder().glob(f"*{SUFFIX}"))


def find(value: str | Path) -> Path:
    """``--config VALUE`` -> a file: the path when it exists (so a local file always wins), else
    the bundled recipe named ``VALUE`` (with or without ``.yaml``); else a one-line error that
    names ``VALUE`` and lists the recipes."""
    path = Path(value)
    if path.exists() and not path.is_dir():  # not is_file(): `--config <(...)` is a pipe
        return path
    name = str(value).removesuffix(SUFFIX)
    known = names()
    if name not in known:
        raise _unknown(f"config {str(value)!r} is neither a file nor a bundled recipe", name, known)
    return folder() / f"{name}{SUFFIX}"


def _unknown(what: str, name: str, known: list[str]) -> ImgclsError:
    matches = close_matches(Path(name).name, known)
    hint = f"; did you mean {', '.join(matches)}?" if matches else ""
    return ImgclsError(f"{what}{hint} (recipes: {', '.join(known)})")


def describe(name: str) -> Recipe:
    """A bundled recipe with its header: the first comment line and the ``# measured:`` line."""
    name = name.removesuffix(SUFFIX)
    known = names()
    if name not in known:
        raise _unknown(f"unknown recipe {name!r}", name, known)
    path = folder() / f"{name}{SUFFIX}"
    header: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break  # the header is the leading comment block only
        header.append(line)
    purpose = header[0].removeprefix("#").strip() if header else ""
    measured = next((line.removeprefix(MEASURED).strip() for line in header
                     if line.startswith(MEASURED)), "not measured yet")
    return Recipe(name, path, purpose, measured)


def list_recipes() -> list[Recipe]:
    """Every bundled recipe, by name."""
    return [describe(name) for name in names()]
