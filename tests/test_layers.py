"""The layer order, enforced: every ``import imgcls...`` (function-local ones included) goes from
a higher layer to the same or a lower one, and the packages import each other without a cycle.
Data flows one way: cli -> api -> engine -> data / models / optim -> the foundation."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "imgcls"

# Lowest first. A module is placed by its first name under imgcls (a package or a module).
LAYERS: list[set[str]] = [
    {"imgcls", "errors", "files", "metric_table", "registry", "runtime", "tracking", "config",
     "recipes", "startup"},
    {"models"},
    {"data", "optim", "losses"},
    {"datacheck"},
    {"runs"},  # what a run writes and reads: folder, checkpoint, record, lock, repair
    {"engine"},
    {"deploy"},  # a checkpoint -> a model in use: load, score, predict, export, convert
    {"explain"},  # heatmaps of what a decision rests on
    {"serve"},  # a checkpoint behind HTTP
    {"report", "api"},  # what reads or drives runs
    {"experiments"},  # studies of many runs: train through api, pages through report
    {"cli"},
    {"entry", "__main__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "imgcls"


def _imports() -> list[tuple[str, str, str]]:
    """(importing module, imported module, file:line) for every imgcls import in the package."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        module = "imgcls." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == "imgcls":  # from imgcls import api, runtime
                    targets = [f"imgcls.{alias.name}" for alias in node.names]
                elif node.module.startswith("imgcls."):
                    targets = [node.module]
                else:
                    continue
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.split(".")[0] == "imgcls"]
            else:
                continue
            where = f"{path.relative_to(PACKAGE)}:{node.lineno}"
            found += [(module, target, where) for target in targets]
    return found


def test_every_module_has_a_layer():
    units = {_unit(m) for m, _, _ in _imports()} | {_unit(t) for _, t, _ in _imports()}
    units.discard("__version__")
    assert units <= set(RANK), f"place these in LAYERS: {sorted(units - set(RANK))}"


def test_imports_go_down_the_layers():
    wrong = [f"{where}: {src} imports {dst}" for src, dst, where in _imports()
             if _unit(dst) in RANK and RANK[_unit(src)] < RANK[_unit(dst)]]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles_between_packages():
    edges: dict[str, set[str]] = defaultdict(set)
    for src, dst, _ in _imports():
        if _unit(src) != _unit(dst) and _unit(dst) in RANK:
            edges[_unit(src)].add(_unit(dst))

    def reaches(start: str, goal: str) -> bool:
        seen, stack = set(), [start]
        while stack:
            for nxt in edges[stack.pop()] - seen:
                if nxt == goal:
                    return True
                seen.add(nxt)
                stack.append(nxt)
        return False

    cycles = [f"{a} <-> {b}" for a in sorted(edges) for b in sorted(edges[a]) if reaches(b, a)]
    assert not cycles, cycles
