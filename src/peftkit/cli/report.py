"""What ``peftkit train`` prints at the end: the before/after table, a few held-out answers, the files."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from peftkit.cli.evaluate import Scores
from peftkit.cli.examples import Example


def _percent(scores: Scores) -> str:
    return "n/a" if scores.exact_match is None else f"{100 * scores.exact_match:.1f}%"


def _size(path: str) -> str:
    files = [os.path.join(path, f) for f in os.listdir(path)] if os.path.isdir(path) else [path]
    total = sum(os.path.getsize(f) for f in files if os.path.isfile(f))
    return f"{total / 1024:.1f} kB" if total < 1024**2 else f"{total / 1024**2:.1f} MB"


def print_summary(
    before: Scores,
    after: Scores,
    examples: Sequence[Example],
    paths: Mapping[str, str],
    reload_diff: float,
    seconds: float,
) -> None:
    """Print the held-out figures before and after training, sample answers and where every file went."""
    print(f"\nheld-out figures ({len(examples)} examples), training took {seconds:.0f} s:")
    print(f"  {'':14s}{'before':>10s}{'after':>10s}")
    print(f"  {'loss':14s}{before.loss:10.4f}{after.loss:10.4f}")
    if after.exact_match is not None:
        print(f"  {'exact match':14s}{_percent(before):>10s}{_percent(after):>10s}   ({after.correct}/{after.total})")
        answered = [e for e in examples if e.answer is not None]
        samples = [
            f"{e.prompt!r} -> {p!r} ({'ok' if p == (e.answer or '').strip() else 'expected ' + repr(e.answer)})"
            for e, p in list(zip(answered, after.predictions))[:4]
        ]
        print("  after, e.g.:  " + "; ".join(samples))
    verdict = "outputs equal" if reload_diff <= 1e-4 else "OUTPUTS DIFFER"
    print("\nfiles:")
    for name, path in paths.items():
        note = ""
        if name == "adapter":
            note = f"  (PEFT format, {_size(path)}; reloaded: {verdict}, max |diff| {reload_diff:.2g})"
        elif name == "checkpoints":
            note = "  (adapter-only; continue with --resume)"
        print(f"  {name:12s} {path}{note}")
    adapter = paths["adapter"]
    print(f"\nnext: peftkit inspect {adapter}   |   peftkit merge {adapter} --output-dir merged-model")
