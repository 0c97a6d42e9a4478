"""House rules a reviewer would otherwise check by hand."""

import ast
from pathlib import Path

import longred_pl

PACKAGE = Path(longred_pl.__file__).parent
MAX_FUNCTION_LINES = 60


def test_no_library_function_is_over_60_lines():
    """From ``def`` to its last line, docstring included (a tool's docstring is its --help:
    parameters that travel together belong in an argument group, ``longred_pl.arguments``)."""
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({lines})")
    assert not long, long
