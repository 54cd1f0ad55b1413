"""The benchmark harness on its tiniest configuration: every figure runs once for each library, the two
libraries' outputs agree, and the table and the JSON file are written. Nothing here asserts a timing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import run as bench  # noqa: E402


@pytest.mark.slow
def test_every_figure_runs_and_agrees(tmp_path, capsys) -> None:
    out = tmp_path / "results.json"
    assert bench.main(["--preset", "tiny", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    figures = [row["figure"] for row in data["rows"]]
    for expected in (
        "train step, dropout 0",
        "activation memory, dropout 0.05",
        "decode forward (1 token)",
        "load_adapter",
        "hot-swap",
        "LoRA injection (meta device)",
        "merge_and_unload",
        "recompiles: set_adapter",
        "LoHa train step",
        "LoKr train step",
        "trainable tokens train step",
    ):
        assert expected in figures
        assert f"| {expected} |" in printed
    assert all(row["agree"] is not False for row in data["rows"])
    assert "compiled decode (1 token)" in figures
    # The compiled-decode figure compiles peftkit and the bare base only (see benchmarks/compiled.py).
    both = [row for row in data["rows"] if not row["figure"].startswith("compiled decode")]
    assert all(row["peftkit"] is not None and row["peft"] is not None for row in both)
    assert data["machine"]["peft"] == "0.21.2" and data["machine"]["preset"] == "tiny"
