"""The shape the architecture issue set, kept: every package ships, modules stay readable.

The layers themselves are import-linter's contracts (``pyproject.toml``, run by ``make lint``).
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "syncd"
#: The emulator models SecureVideo's whole API in two modules; it is a test peer, not syncd.
MODULE_LINES_EXEMPT = {"emulator"}
MODULE_LINES = 600
SYNC_FUNCTION_LINES = 60


def test_every_package_is_in_the_wheel() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("__init__.py")}
    assert found - listed == set()


def test_no_module_is_over_the_limit() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in PACKAGE.rglob("*.py")
        if not MODULE_LINES_EXEMPT & set(p.relative_to(PACKAGE).parts)
        and (n := len(p.read_text().splitlines())) > MODULE_LINES
    }
    assert long == {}


def test_no_function_of_the_sync_layer_is_over_the_limit() -> None:
    long = {}
    for path in (PACKAGE / "sync").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > SYNC_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT)}:{node.name}"] = lines
    assert long == {}
