"""Spread of the main job (``python -m peftkit``) over seeds and CPU kernel paths (run from the repository root).

    python scripts/main_job_spread.py                       # seeds 0-4 x kernel paths default, avx2
    python scripts/main_job_spread.py --jobs 2 -- --max-steps 200   # arguments after -- go to `peftkit train`

Each run is a fresh process with one torch thread (``OMP_NUM_THREADS=1``), ``--seed S``, and for the ``avx2``
path ``ATEN_CPU_CAPABILITY=avx2`` (torch's AVX2 kernels instead of the CPU's best, e.g. AVX-512). The CPU
time of a run is the process's user + system time (``os.wait4``), so it does not depend on how busy a shared
machine is. Prints one line per run, then min / median / max of held-out exact match, held-out loss and CPU
seconds, and writes every figure to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Run:
    """One job's figures: held-out exact match (0-1), held-out answer loss (nats/token), process CPU seconds."""

    seed: int
    path: str
    exact_match: float
    loss: float
    cpu_seconds: float


def run_job(seed: int, path: str, extra: list[str], workdir: str) -> Run:
    """Run ``python -m peftkit train --seed SEED`` (+ ``extra``) in a child process on kernel path ``path``.

    Raises:
        RuntimeError: the job exited with a non-zero status (its last output lines are in the message).
    """
    out = os.path.join(workdir, f"seed{seed}-{path}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("ATEN_CPU_CAPABILITY", None)
    if path != "default":
        env["ATEN_CPU_CAPABILITY"] = path
    command = [sys.executable, "-m", "peftkit", "train", "--seed", str(seed), "--output-dir", out, *extra]
    with open(out + ".log", "w") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        with open(out + ".log") as log:
            tail = "".join(log.readlines()[-5:])
        raise RuntimeError(f"seed {seed}, {path}: exit code {child.returncode}\n{tail}")
    with open(os.path.join(out, "metrics.json")) as fh:
        after = json.load(fh)["after"]
    return Run(seed, path, after["exact_match"], after["loss"], usage.ru_utime + usage.ru_stime)


def summary(runs: list[Run]) -> str:
    """A min / median / max table of exact match (%), loss and CPU seconds over ``runs``."""
    rows = [
        ("exact match (%)", [100 * r.exact_match for r in runs], "{:.1f}"),
        ("held-out loss", [r.loss for r in runs], "{:.4f}"),
        ("CPU seconds", [r.cpu_seconds for r in runs], "{:.0f}"),
    ]
    lines = [f"{'over ' + str(len(runs)) + ' runs':18s}{'min':>9s}{'median':>9s}{'max':>9s}"]
    for name, values, form in rows:
        cells = (form.format(v) for v in (min(values), statistics.median(values), max(values)))
        lines.append(f"{name:18s}" + "".join(f"{c:>9s}" for c in cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds (default 0-4)")
    parser.add_argument("--paths", nargs="+", default=["default", "avx2"], help="kernel paths (default, avx2)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (each uses one thread)")
    parser.add_argument("--json", default=None, help="also write every run's figures to this file")
    parser.add_argument("--keep", default=None, help="write the runs' folders and logs here (default: a temp dir)")
    parser.add_argument("extra", nargs="*", help="arguments for `peftkit train` (after --)")
    args = parser.parse_args()
    print("command: python -m peftkit train --seed SEED " + " ".join(args.extra), flush=True)
    grid = [(seed, path) for seed in args.seeds for path in args.paths]
    with tempfile.TemporaryDirectory(prefix="main-job-spread-") as scratch, ThreadPoolExecutor(args.jobs) as pool:
        workdir = args.keep or scratch
        os.makedirs(workdir, exist_ok=True)
        futures = [pool.submit(run_job, seed, path, args.extra, workdir) for seed, path in grid]
        runs = []
        for future in futures:
            run = future.result()
            runs.append(run)
            print(f"seed {run.seed}  {run.path:8s} exact match {100 * run.exact_match:5.1f}%  "
                  f"loss {run.loss:.4f}  {run.cpu_seconds:4.0f} CPU s", flush=True)  # fmt: skip
    print(summary(runs))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"extra": args.extra, "runs": [asdict(r) for r in runs]}, fh, indent=2)


if __name__ == "__main__":
    main()
