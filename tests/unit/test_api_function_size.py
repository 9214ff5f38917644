"""No function in gateway/api is over 60 lines (issue 13): a function that long in the
GraphQL contract has grown a second job (build_schema was 147 lines of closures,
limit_rule a 95-line closure around a class)."""

from __future__ import annotations

import ast
from pathlib import Path

import gateway.api

MAX_LINES = 60


def test_no_function_in_the_api_is_over_60_lines() -> None:
    long = []
    for path in sorted(Path(gateway.api.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []
