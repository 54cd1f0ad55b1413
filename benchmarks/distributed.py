"""Adapter-only checkpoints of a 2-process sharded run (FSDP2, DeepSpeed ZeRO-3; gloo on the CPU): the save's
wall time on rank 0 (gather + write, all ranks in step) and the file's size, peftkit vs the reference peft.

The work runs in :mod:`benchmarks.distributed_worker` under ``torchrun``; figures are medians of 3 saves after
a warm-up. The base is the ``SMALL`` Llama shape with LoRA r=16 on all 7 projections.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.harness import PEFT, PEFTKIT, Row, Settings
from benchmarks.models import SMALL

ROOT = Path(__file__).resolve().parents[1]


def launch(engine: str) -> dict:
    """Run the worker for ``engine`` with 2 processes and return its JSON."""
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory) / "result.json"
        with socket.socket() as sock:  # a free port for the rendezvous
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}"]
        command += [str(ROOT / "benchmarks" / "distributed_worker.py"), engine, str(out)]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT}")
        if engine == "zero3":
            env["DS_ACCELERATOR"] = "cpu"
        subprocess.run(command, env=env, cwd=ROOT, check=True, capture_output=True, timeout=900)
        return json.loads(out.read_text())


def rows_for(results: dict, engine: str, how: str) -> list[Row]:
    """The rows of one engine: ``results`` keys are ``"<engine> save, <how> (<library>)"``."""

    def ms(name: str) -> float:
        return statistics.median(results[name]["ms"])

    kit, ref = f"{engine} save, {how} ({PEFTKIT})", f"{engine} save, {how} ({PEFT})"
    adapter_only = f"{engine} save, adapter-only gather ({PEFTKIT})"
    note = f"2 gloo processes, {SMALL.describe()}, LoRA r=16 on 7 projections; wall ms on rank 0"
    mib = [results[name]["bytes"] / 2**20 for name in (kit, ref)]
    return [
        Row(f"{engine}: adapter save, {how}", "ms", ms(kit), ms(ref), None, None, None, note),
        Row(
            f"{engine}: adapter save, peftkit adapter-only gather",
            "ms",
            ms(adapter_only),
            ms(ref),
            None,
            note="peftkit.gather_peft_model_state_dict vs peft with the engine's full gather",
        ),
        Row(f"{engine}: adapter file size", "MiB", *mib, None, None, mib[0] == mib[1], "adapter_model.safetensors"),
    ]


def run(settings: Settings) -> list[Row]:
    if settings.preset == "tiny":
        return []  # two torchrun launches: not part of the harness's one-shot check
    return rows_for(launch("fsdp2"), "FSDP2", "full gather") + rows_for(
        launch("zero3"), "ZeRO-3", "consolidated state dict"
    )
