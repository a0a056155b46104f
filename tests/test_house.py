"""The bar kept by a test (issue 32 item 4): no function or method in xnetspace/ is longer than 60
lines, from its ``def`` to its last line, docstring included (tests and benchmarks aside). Ruff's
C901, PLR0912 and PLR0915 (pyproject.toml) keep each one's complexity down."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "xnetspace"
MAX_LINES = 60


def test_no_function_in_the_package_is_longer_than_60_lines():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these: " + "; ".join(long)
