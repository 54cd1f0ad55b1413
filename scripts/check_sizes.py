"""Check the size limits of the style guide: no file in src/ over 400 lines, no function over 60.

A function's length runs from its ``def`` line to its last line (docstring included). Prints each offender
as ``path:line: what`` and exits with 1 when there is one.

Usage: ``python scripts/check_sizes.py [ROOT ...]`` (default: ``src``).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def oversized(path: Path) -> Iterator[str]:
    """``path:line: message`` for the file itself and each function in it that is over the limits."""
    text = path.read_text(encoding="utf-8")
    lines = text.count("\n") + (0 if text.endswith("\n") or not text else 1)
    if lines > MAX_FILE_LINES:
        yield f"{path}:1: {lines} lines (max {MAX_FILE_LINES})"
    for node in ast.walk(ast.parse(text, filename=str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                yield f"{path}:{node.lineno}: function {node.name} has {length} lines (max {MAX_FUNCTION_LINES})"


def main(roots: list[str]) -> int:
    """Check every ``.py`` file under ``roots``; 1 when something is over a limit."""
    problems = [p for root in roots for path in sorted(Path(root).rglob("*.py")) for p in oversized(path)]
    print("\n".join(problems) or f"sizes ok: files <= {MAX_FILE_LINES} lines, functions <= {MAX_FUNCTION_LINES}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["src"]))
