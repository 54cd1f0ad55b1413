"""LoHa and LoKr training step: time of forward + loss + backward against the reference, on the same weights.

Floor: the frozen model whose embedding output requires grad (as in ``train_step``). Both libraries rebuild
each layer's ``delta W`` from its factors and apply it as one extra matmul (LyCORIS's formulation), so the ratio
shows the cost of the shared template layer against the reference's per-method forward.
"""

from __future__ import annotations

import copy

import peft
import torch
from torch import nn

import peftkit
from benchmarks.harness import FLOOR, PEFT, PEFTKIT, Case, Row, Settings, close, interleaved
from benchmarks.models import build_model
from benchmarks.train_step import PRESETS, activation_mib, frozen_floor, step, zero_grads

METHODS = {"LoHa": "LoHaConfig", "LoKr": "LoKrConfig"}


def pair(base: nn.Module, config_class: str) -> tuple[nn.Module, nn.Module]:
    """``(peftkit model, peft model)`` with the same random factors (r=8, all-linear)."""
    fields = {"r": 8, "alpha": 16, "target_modules": "all-linear", "init_weights": False}
    ref = peft.get_peft_model(copy.deepcopy(base), getattr(peft, config_class)(**fields))
    kit = peftkit.get_peft_model(copy.deepcopy(base), getattr(peftkit, config_class)(**fields))
    kit.load_state_dict(ref.state_dict())
    return kit.train(), ref.train()


def agreement(kit: nn.Module, ref: nn.Module, ids: torch.Tensor) -> bool:
    """Same loss and the same gradient for every adapter tensor."""
    same = close(step(kit, ids), step(ref, ids))
    theirs = {n: p for n, p in ref.named_parameters() if p.requires_grad}
    mine = dict(kit.named_parameters())
    same = same and all(close(mine[n].grad, p.grad, rtol=1e-3, atol=1e-6) for n, p in theirs.items())
    zero_grads(kit), zero_grads(ref)
    return same


def run(settings: Settings) -> list[Row]:
    shape = PRESETS[settings.preset]
    base = build_model(shape.model, device=settings.device)
    ids = torch.randint(0, shape.model.vocab, (shape.batch, shape.seq), generator=torch.Generator().manual_seed(0))
    ids = ids.to(settings.device)
    models: dict[str, nn.Module] = {FLOOR: frozen_floor(base).train()}
    agree = {}
    for method, config_class in METHODS.items():
        kit, ref = pair(base, config_class)
        agree[method] = agreement(kit, ref, ids)
        models[f"{PEFTKIT} {method}"], models[f"{PEFT} {method}"] = kit, ref
    cases = {name: Case(run=lambda m=m: step(m, ids), prepare=lambda m=m: zero_grads(m)) for name, m in models.items()}
    times = interleaved(settings, cases)
    memory = {name: activation_mib(m, ids) for name, m in models.items()}
    what = f"{shape.model.describe()}; batch {shape.batch} x {shape.seq} tokens; r=8 all-linear"
    rows = []
    for method in METHODS:
        kit, ref = f"{PEFTKIT} {method}", f"{PEFT} {method}"
        samples = times.triple(kit, ref, FLOOR)
        rows.append(
            Row(
                f"{method} train step",
                "ms",
                times[kit],
                times[ref],
                times[FLOOR],
                None,
                agree[method],
                what,
                samples=samples,
            )
        )
        rows.append(
            Row(
                f"{method} activation memory",
                "MiB",
                memory[kit],
                memory[ref],
                memory[FLOOR],
                None,
                agree[method],
                "distinct storages saved for backward (parameters excluded)",
            )
        )
    return rows
