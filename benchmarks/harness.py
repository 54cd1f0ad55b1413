"""Timing, memory accounting, agreement checks and result rows shared by every benchmark.

Timing is interleaved: repetition ``i`` runs every variant once (peftkit, peft, floor, in an order that rotates
with ``i``) so that slow drifts of a shared machine hit all variants alike. Each variant's figure is the
median of its repetitions, and each ratio the median of the per-repetition ratios (the two times of one
round were taken moments apart, so a slow spell of the machine cancels out of their ratio). The default
clock is the process CPU time with one intra-op thread (robust on a machine whose cores are shared with
other work); ``wall`` uses ``perf_counter`` and synchronises CUDA.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

#: The three variants every timed figure compares.
PEFTKIT, PEFT, FLOOR = "peftkit", "peft", "floor"


@dataclass(frozen=True)
class Settings:
    """How to run: preset size, clock, device, repetitions.

    Attributes:
        preset: ``"full"``, ``"quick"`` or ``"tiny"`` (the test's one-shot harness check).
        clock: ``"cpu"`` (process CPU time) or ``"wall"`` (wall clock; use on a dedicated machine or GPU).
        device: Torch device of the small models (``"cpu"`` or ``"cuda"``).
        reps: Timed repetitions per variant (after one untimed warm-up).
    """

    preset: str = "full"
    clock: str = "cpu"
    device: str = "cpu"
    reps: int = 7

    def now(self) -> float:
        """The current time in seconds on the chosen clock (after draining queued CUDA work)."""
        if self.clock == "wall":
            if self.device.startswith("cuda"):
                torch.cuda.synchronize()
            return time.perf_counter()
        return time.process_time()


@dataclass
class Row:
    """One line of the result table.

    Attributes:
        figure: What is measured (e.g. ``"train step, dropout 0"``).
        unit: ``"ms"``, ``"MiB"`` or ``"count"``.
        peftkit, peft, floor: The measured values (``None`` where not applicable or pending).
        target: The target for ``peftkit / floor`` (``None``: none set).
        agree: Whether peftkit's and peft's outputs agreed (``None``: not compared).
        note: Anything the reader must know (config, what the floor is, why pending).
    """

    figure: str
    unit: str
    peftkit: float | None
    peft: float | None
    floor: float | None
    target: float | None = None
    agree: bool | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, list[float]] | None = None

    def _ratio(self, a: str, b: str) -> float | None:
        """``a / b``: the median over repetitions of the ratio within each round when timings were sampled
        (both measured moments apart, so a slow spell of the machine cancels), else the plain ratio."""
        if self.samples is not None and a in self.samples and b in self.samples:
            return statistics.median(x / y for x, y in zip(self.samples[a], self.samples[b]))
        top, bottom = getattr(self, a), getattr(self, b)
        if top is None or bottom is None or bottom == 0:
            return None
        return top / bottom

    @property
    def kit_vs_peft(self) -> float | None:
        return self._ratio(PEFTKIT, PEFT)

    @property
    def kit_vs_floor(self) -> float | None:
        return self._ratio(PEFTKIT, FLOOR)

    @property
    def peft_vs_floor(self) -> float | None:
        return self._ratio(PEFT, FLOOR)

    @property
    def met(self) -> bool | None:
        """Whether peftkit meets the target (for counts: equal to it)."""
        if self.target is None or self.peftkit is None:
            return None
        if self.unit == "count":
            return self.peftkit <= self.target
        ratio = self.kit_vs_floor
        return ratio is not None and ratio <= self.target

    def as_dict(self) -> dict[str, Any]:
        return {
            "figure": self.figure,
            "unit": self.unit,
            "peftkit": self.peftkit,
            "peft": self.peft,
            "floor": self.floor,
            "peftkit_over_peft": self.kit_vs_peft,
            "peftkit_over_floor": self.kit_vs_floor,
            "peft_over_floor": self.peft_vs_floor,
            "target": self.target,
            "met": self.met,
            "agree": self.agree,
            "note": self.note,
            **self.extra,
            "samples_ms": self.samples,
        }


@dataclass
class Case:
    """One timed variant: ``run`` is timed; ``prepare`` and ``cleanup`` (untimed) surround it."""

    run: Callable[[], Any]
    prepare: Callable[[], Any] | None = None
    cleanup: Callable[[], Any] | None = None


class Timings(dict):  # type: ignore[type-arg]
    """Median milliseconds per case; ``samples`` keeps every repetition's time, aligned by round."""

    def __init__(self, samples: dict[str, list[float]]) -> None:
        super().__init__({name: statistics.median(values) for name, values in samples.items()})
        self.samples = samples

    def triple(self, kit: str, peft: str, floor: str | list[float]) -> dict[str, list[float]]:
        """The samples of peftkit, peft and the floor (a case name, or per-round values) under the row's keys."""
        floor_samples = self.samples[floor] if isinstance(floor, str) else floor
        return {PEFTKIT: self.samples[kit], PEFT: self.samples[peft], FLOOR: floor_samples}

    def row(
        self,
        figure: str,
        agree: bool | None,
        note: str,
        cases: tuple[str, str, str] = (PEFTKIT, PEFT, FLOOR),
        target: float | None = None,
    ) -> Row:
        """The milliseconds row of cases ``(peftkit, peft, floor)``, with their per-round samples."""
        kit, peft, floor = cases
        samples = self.triple(kit, peft, floor)
        return Row(figure, "ms", self[kit], self[peft], self[floor], target, agree, note, samples=samples)


def interleaved(settings: Settings, cases: dict[str, Case], reps: int | None = None) -> Timings:
    """Time in milliseconds of each case, over ``reps`` interleaved repetitions after one warm-up.

    The garbage collector runs before each round and is disabled during each timed call.
    """
    reps = settings.reps if reps is None else reps
    names = list(cases)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(reps + 1):
        shift = rep % len(names)
        gc.collect()  # once per round: a full collection costs ~0.2 s with transformers and peft loaded
        for name in names[shift:] + names[:shift]:
            case = cases[name]
            if case.prepare is not None:
                case.prepare()
            gc.disable()
            try:
                start = settings.now()
                case.run()
                elapsed = settings.now() - start
            finally:
                gc.enable()
            if case.cleanup is not None:
                case.cleanup()
            if rep > 0:
                samples[name].append(elapsed * 1e3)
    return Timings(samples)


class SavedActivations:
    """Bytes of the distinct storages autograd saves for backward, excluding the model's own tensors.

    Used as a context manager around a forward pass: every tensor autograd (or a custom autograd function)
    saves passes through the pack hook; storages of parameters and buffers are not activations and are
    skipped; a storage saved several times (or through several views) counts once.
    """

    def __init__(self, *models: nn.Module) -> None:
        self._exclude = {t.untyped_storage().data_ptr() for m in models for t in [*m.parameters(), *m.buffers()]}
        self._seen: dict[int, int] = {}

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self._exclude and ptr not in self._seen:
            self._seen[ptr] = storage.nbytes()
        return tensor

    @property
    def mib(self) -> float:
        return sum(self._seen.values()) / 2**20

    @contextmanager
    def recording(self) -> Iterator[SavedActivations]:
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
            yield self


def square_loss_step(model: nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A training step to time: zero the gradients, ``out = model(x)``, backward of ``mean(out ** 2)`` plus the
    model's auxiliary loss where it has one (MonteCLoRA's ``_get_monteclora_loss``); returns ``out``."""

    def run() -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        out = model(x)
        loss = out.square().mean()
        auxiliary = getattr(model, "_get_monteclora_loss", None)
        if auxiliary is not None:
            loss = loss + auxiliary()
        loss.backward()
        return out

    return run


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max())


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-5) -> bool:
    """``allclose`` in float32 (shapes must match)."""
    return a.shape == b.shape and torch.allclose(a.detach().float(), b.detach().float(), rtol=rtol, atol=atol)


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "count":
        return f"{value:.0f}"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def table(rows: list[Row]) -> str:
    """A GitHub-markdown table of ``rows``: values, the three ratios, the target and whether it is met."""
    head = (
        "| figure | unit | peftkit | peft | floor | peftkit/peft | peftkit/floor | peft/floor | target | met | agree |"
    )
    lines = [head, "|" + "---|" * 11]
    for row in rows:
        if row.unit == "count":
            target = "-" if row.target is None else f"{row.target:.0f}"
        else:
            target = "-" if row.target is None else f"<= {row.target:.2f}x"
        met = {None: "-", True: "yes", False: "**no**"}[row.met]
        agree = {None: "-", True: "yes", False: "**NO**"}[row.agree]
        lines.append(
            f"| {row.figure} | {row.unit} | {fmt_value(row.peftkit, row.unit)} | {fmt_value(row.peft, row.unit)} | "
            f"{fmt_value(row.floor, row.unit)} | {fmt_ratio(row.kit_vs_peft)} | {fmt_ratio(row.kit_vs_floor)} | "
            f"{fmt_ratio(row.peft_vs_floor)} | {target} | {met} | {agree} |"
        )
    return "\n".join(lines)
