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
        "MonteCLoRA: train step",
    ):
        assert expected in figures
        assert f"| {expected} |" in printed
    assert all(row["agree"] is not False for row in data["rows"])
    assert "compiled decode (1 token)" in figures
    # The compiled-decode figure compiles peftkit and the bare base only (see benchmarks/compiled.py).
    both = [row for row in data["rows"] if not row["figure"].startswith("compiled decode")]
    assert all(row["peftkit"] is not None and row["peft"] is not None for row in both)
    assert data["machine"]["peft"] == "0.21.2" and data["machine"]["preset"] == "tiny"


def test_cuda_without_a_device_or_with_the_cpu_clock_is_refused(capsys) -> None:
    """``--device cuda`` needs a CUDA device and the wall clock (CPU time misses the GPU's work)."""
    assert bench.main(["--preset", "tiny", "--device", "cuda", "--clock", "cpu", "--only", "forward"]) == 2
    reason = capsys.readouterr().err
    assert "--device cuda" in reason and ("no CUDA device" in reason or "--clock wall" in reason)
    settings = bench.Settings(preset="tiny", clock="wall", device="cpu")
    assert bench.device_problem(settings) is None
