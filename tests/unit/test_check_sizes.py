"""``scripts/check_sizes.py`` finds a file over 400 lines and a function over 60 (and passes on src/)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _checker():
    spec = importlib.util.spec_from_file_location("check_sizes", ROOT / "scripts" / "check_sizes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_limits_are_found(tmp_path: Path) -> None:
    checker = _checker()
    body = "".join(f"    x{i} = {i}\n" for i in range(59))
    (tmp_path / "ok.py").write_text(f"def fits():\n{body}")  # 60 lines
    (tmp_path / "long.py").write_text(f"def too_long():\n{body}    x = 0\n" + "\n" * 340)  # 61-line function
    problems = [p for path in sorted(tmp_path.glob("*.py")) for p in checker.oversized(path)]
    assert problems == [f"{tmp_path / 'long.py'}:1: 401 lines (max 400)",
                        f"{tmp_path / 'long.py'}:1: function too_long has 61 lines (max 60)"]  # fmt: skip


def test_src_is_within_the_limits() -> None:
    assert _checker().main([str(ROOT / "src")]) == 0
