"""The shape a newcomer can read: no module over MODULE_LINES lines and no function over
FUNCTION_LINES (docstrings included), so each file has one job and each function fits a screen."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "imgcls"
MODULE_LINES = 400
FUNCTION_LINES = 60


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_is_over_the_limit():
    long = [f"{path.relative_to(PACKAGE)}: {n} lines" for path in _modules()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MODULE_LINES]
    assert not long, f"split these (limit {MODULE_LINES}):\n" + "\n".join(long)


def test_no_function_is_over_the_limit():
    long = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}: {lines}")
    assert not long, f"shorten these (limit {FUNCTION_LINES}):\n" + "\n".join(long)
