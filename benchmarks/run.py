"""Run peftkit and the reference peft side by side and print a table of ratios.

Usage (from the repository root)::

    python -m benchmarks.run                 # everything, CPU time, one intra-op thread (~15 min on 1 core)
    python -m benchmarks.run --quick         # smaller shapes, fewer repetitions (~1-2 min)
    python -m benchmarks.run --clock wall --device cuda --threads 0   # dedicated machine / GPU
    python -m benchmarks.run --only train_step,loading --json out.json

Every figure runs both libraries in this one process, interleaved, on the same weights and inputs, and
checks that their outputs agree. The table gives peftkit / peft and each library / the physical floor.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks import (
    compiled,
    distributed,
    forward,
    large,
    loading,
    lora_variants,
    lycoris,
    mixed_batch,
    moe_weighted,
    orthogonal,
    qlora,
    recompiles,
    scale,
    train_step,
    trainable_tokens,
    velora,
)
from benchmarks.harness import Row, Settings, table

FIGURES: dict[str, Callable[[Settings], list[Row]]] = {
    "train_step": train_step.run,
    "forward": forward.run,
    "mixed_batch": mixed_batch.run,
    "loading": loading.run,
    "large": large.run,
    "recompiles": recompiles.run,
    "compiled": compiled.run,
    "qlora": qlora.run,
    "scale": scale.run,
    "distributed": distributed.run,
    "moe_weighted": moe_weighted.run,
    "trainable_tokens": trainable_tokens.run,
    "orthogonal": orthogonal.run,
    "lycoris": lycoris.run,
    "lora_variants": lora_variants.run,
    "velora": velora.run,
}
REPS = {"full": 7, "quick": 3, "tiny": 1}


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import peft
    import transformers

    import peftkit

    return {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "peftkit": peftkit.__version__,
    }


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes and 3 repetitions (~1-2 minutes)")
    parser.add_argument("--preset", choices=["full", "quick", "tiny"], help="explicit preset (tiny: harness test)")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="process CPU time or wall clock")
    parser.add_argument("--device", default="cpu", help="device of the models (cpu, cuda)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (0: leave torch's default)")
    parser.add_argument("--reps", type=int, help="timed repetitions per variant (default: 7, quick: 3)")
    parser.add_argument("--only", help=f"comma-separated figures: {', '.join(FIGURES)}")
    parser.add_argument("--json", default="benchmarks/results.json", help="where to write the JSON results")
    return parser.parse_args(argv)


def device_problem(settings: Settings) -> str | None:
    """Why ``settings`` cannot measure anything meaningful, or ``None``: a CUDA device that is not there, or CUDA
    timed with the CPU clock (process CPU time leaves out the GPU's work, and kernel launches are asynchronous)."""
    if not settings.device.startswith("cuda"):
        return None
    if not torch.cuda.is_available():
        return f"--device {settings.device}: torch sees no CUDA device here; run on a machine with one."
    if settings.clock != "wall":
        return f"--device {settings.device} needs --clock wall: CPU time leaves out the GPU's work."
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    preset = args.preset or ("quick" if args.quick else "full")
    settings = Settings(preset=preset, clock=args.clock, device=args.device, reps=args.reps or REPS[preset])
    refused = device_problem(settings)
    if refused:
        print(refused, file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.only.split(",") if args.only else list(FIGURES)
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        print(f"unknown figure(s) {unknown}; choose from {list(FIGURES)}", file=sys.stderr)
        return 2
    warnings.filterwarnings("ignore")
    rows: list[Row] = []
    started = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        rows.extend(FIGURES[name](settings))
        print(f"[{name}: {time.perf_counter() - t0:.0f} s]", file=sys.stderr, flush=True)
    info = {
        **machine(),
        "preset": preset,
        "clock": settings.clock,
        "device": settings.device,
        "threads": torch.get_num_threads(),
        "reps": settings.reps,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(table(rows))
    print(
        f"\n{info['date']}, {info['cpu']} ({info['cores']} cores), {info['clock']} time, {info['threads']} "
        f"thread(s), device {info['device']}, preset {preset}, medians of {settings.reps} interleaved repetitions "
        "(train step 2x, decode 10x, prefill 2x as many); "
        f"torch {info['torch']}, transformers {info['transformers']}, peft {info['peft']}; {info['seconds']} s"
    )
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": info, "rows": [r.as_dict() for r in rows]}, indent=2) + "\n")
    print(f"JSON: {path}")
    disagree = [r.figure for r in rows if r.agree is False]
    if disagree:
        print(f"OUTPUTS DISAGREE: {disagree}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
