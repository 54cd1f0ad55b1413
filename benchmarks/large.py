"""LoRA injection into a ~1.1B-parameter Llama-shaped model (real CPU weights and meta device), and
``merge_and_unload`` on it.

The real model (4.4 GB in float32) is built once and shared: each injection is undone with ``unload()``
(untimed) before the next, so both libraries and the floor see the very same modules. The meta model
holds no storage at all.

Floors:

* injection: allocate every adapter tensor on the base weight's device and initialise it as LoRA does
  (``A`` Kaiming-uniform, ``B`` zeros) — no modules, no bookkeeping; on the meta device allocation is all.
* merge: ``W.addmm_(B, A, alpha=s)`` in place for every adapted layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import peft
import torch
from torch import nn

import peftkit
from benchmarks.harness import FLOOR, PEFT, PEFTKIT, Case, Row, Settings, close, interleaved
from benchmarks.models import (
    LARGE,
    TINY,
    Shape,
    adapter_pair,
    build_model,
    build_model_fast,
    kit_config,
    lora_kwargs,
    lora_parameters,
    peft_config,
    shrink,
)


@dataclass(frozen=True)
class LargeShape:
    model: Shape
    meta_model: Shape


PRESETS = {
    "full": LargeShape(LARGE, LARGE),
    "quick": LargeShape(shrink(LARGE, layers=2), LARGE),
    "tiny": LargeShape(TINY, TINY),
}


def _reps(settings: Settings) -> int:
    """Fewer repetitions than the small figures (each takes seconds on the full model), but at least 3."""
    return settings.reps if settings.preset == "tiny" else max(3, settings.reps // 2)


def targets(model: nn.Module) -> list[nn.Linear]:
    """The linear layers LoRA ``all-linear`` adapts (every ``nn.Linear`` but the LM head)."""
    return [m for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.endswith("lm_head")]


class InitFloor:
    """Allocate and initialise ``A (r, in)`` (Kaiming-uniform, a=sqrt(5): bound ``1/sqrt(in)``) and
    ``B (out, r)`` (zeros) for every target, on the target's device."""

    def __init__(self, model: nn.Module, r: int = 16) -> None:
        self.shapes = [(m.in_features, m.out_features, m.weight.device) for m in targets(model)]
        self.r = r
        self.tensors: list[torch.Tensor] = []

    def run(self) -> None:
        for fan_in, fan_out, device in self.shapes:
            bound = 1.0 / math.sqrt(fan_in)
            self.tensors.append(torch.empty(self.r, fan_in, device=device).uniform_(-bound, bound))
            self.tensors.append(torch.zeros(fan_out, self.r, device=device))

    def clear(self) -> None:
        self.tensors.clear()


class Injector:
    """``get_peft_model`` of one library into the shared base model; ``undo`` unloads it again."""

    def __init__(self, library: str, base: nn.Module) -> None:
        self.library, self.base = library, base
        self.wrapped: nn.Module | None = None

    def inject(self) -> None:
        if self.library == PEFTKIT:
            self.wrapped = peftkit.get_peft_model(self.base, kit_config(**lora_kwargs()))
        else:
            self.wrapped = peft.get_peft_model(self.base, peft_config(**lora_kwargs()))

    def undo(self) -> None:
        assert self.wrapped is not None
        self.wrapped.unload()
        self.wrapped = None
        for attr in ("peft_config", "_hf_peft_config_loaded"):
            self.base.__dict__.pop(attr, None)


def same_layout(kit: Injector, ref: Injector) -> bool:
    """Both libraries create the same LoRA tensors (names, shapes, devices)."""
    layouts = []
    for injector in (kit, ref):
        injector.inject()
        layouts.append({n: (p.shape, p.device) for n, p in lora_parameters(injector.wrapped).items()})
        injector.undo()
    return layouts[0] == layouts[1]


def injection_row(settings: Settings, base: nn.Module, where: str) -> Row:
    floor = InitFloor(base)
    kit, ref = Injector(PEFTKIT, base), Injector(PEFT, base)
    agree = same_layout(kit, ref)
    cases = {
        PEFTKIT: Case(run=kit.inject, cleanup=kit.undo),
        PEFT: Case(run=ref.inject, cleanup=ref.undo),
        FLOOR: Case(run=floor.run, cleanup=floor.clear),
    }
    times = interleaved(settings, cases, reps=_reps(settings))
    count = sum(p.numel() for p in base.parameters()) / 1e9
    return Row(
        f"LoRA injection ({where})",
        "ms",
        times[PEFTKIT],
        times[PEFT],
        times[FLOOR],
        1.5,
        agree,
        f"{count:.2f}B-parameter {base.config.num_hidden_layers}-layer Llama shape, {len(floor.shapes)} "
        "linear layers, r=16",
        samples=times.triple(PEFTKIT, PEFT, FLOOR),
    )


class Merger:
    """Inject (untimed, random B), then time ``merge_and_unload``; the base keeps the merged weights (the
    next repetition merges on top, which costs the same)."""

    def __init__(self, library: str, base: nn.Module) -> None:
        self.injector = Injector(library, base)

    def prepare(self) -> None:
        self.injector.inject()
        with torch.no_grad():
            for name, param in self.injector.wrapped.named_parameters():  # type: ignore[union-attr]
                if ".lora_B." in name:
                    param.normal_(std=1e-4)

    def merge(self) -> None:
        self.injector.wrapped.merge_and_unload()  # type: ignore[union-attr]
        self.injector.wrapped = None
        for attr in ("peft_config", "_hf_peft_config_loaded"):
            self.injector.base.__dict__.pop(attr, None)


class MergeFloor:
    """``W.addmm_(B, A, alpha=s)`` for every target, with factors allocated up front."""

    def __init__(self, model: nn.Module, r: int = 16, scaling: float = 2.0) -> None:
        self.items = [
            (
                m.weight,
                torch.randn(m.out_features, r, device=m.weight.device) * 1e-4,
                torch.randn(r, m.in_features, device=m.weight.device) * 0.01,
            )
            for m in targets(model)
        ]
        self.scaling = scaling

    def run(self) -> None:
        with torch.no_grad():
            for weight, B, A in self.items:
                weight.addmm_(B, A, alpha=self.scaling)


def merge_agrees(settings: Settings) -> bool:
    """On a tiny model: both libraries' merged models compute the same as each other and as unmerged."""
    kit, ref = adapter_pair(build_model(TINY, device=settings.device), **lora_kwargs())
    ids = torch.randint(0, TINY.vocab, (2, 8), generator=torch.Generator().manual_seed(0)).to(settings.device)
    with torch.no_grad():
        unmerged = kit(input_ids=ids).logits
        merged = [m.merge_and_unload()(input_ids=ids).logits for m in (kit, ref)]
    return close(merged[0], merged[1]) and close(merged[0], unmerged)


def merge_row(settings: Settings, base: nn.Module) -> Row:
    kit, ref = Merger(PEFTKIT, base), Merger(PEFT, base)
    cases = {
        PEFTKIT: Case(run=kit.merge, prepare=kit.prepare),
        PEFT: Case(run=ref.merge, prepare=ref.prepare),
        FLOOR: Case(run=MergeFloor(base).run),
    }
    times = interleaved(settings, cases, reps=_reps(settings))
    agree = merge_agrees(settings)
    samples = times.triple(PEFTKIT, PEFT, FLOOR)
    return Row("merge_and_unload", "ms", *(times[k] for k in samples), 1.5, agree, "same model, r=16", samples=samples)


def run(settings: Settings) -> list[Row]:
    shape = PRESETS[settings.preset]
    meta = build_model_fast(shape.meta_model, device="meta")
    rows = [injection_row(settings, meta, "meta device")]
    del meta
    real = build_model_fast(shape.model, device=settings.device)
    rows.insert(0, injection_row(settings, real, settings.device))
    rows.append(merge_row(settings, real))
    return rows
