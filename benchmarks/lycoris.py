"""LoHa and LoKr training step: time of forward + loss + backward against the reference, on the same weights.

Floor: the frozen model whose embedding output requires grad (as in ``train_step``). Both libraries rebuild
each layer's ``delta W`` from its factors and apply it as one extra matmul (LyCORIS's formulation), so the ratio
shows the cost of the shared template layer against the reference's per-method forward.
"""

from __future__ import annotations

import copy

import peft
from torch import nn

import peftkit
from benchmarks.harness import FLOOR, PEFT, PEFTKIT, Case, Row, Settings, interleaved
from benchmarks.models import build_model
from benchmarks.train_step import activation_mib, frozen_floor, preset_batch, same_loss_and_grads, step, zero_grads

METHODS = {"LoHa": "LoHaConfig", "LoKr": "LoKrConfig"}


def pair(base: nn.Module, config_class: str) -> tuple[nn.Module, nn.Module]:
    """``(peftkit model, peft model)`` with the same random factors (r=8, all-linear)."""
    fields = {"r": 8, "alpha": 16, "target_modules": "all-linear", "init_weights": False}
    ref = peft.get_peft_model(copy.deepcopy(base), getattr(peft, config_class)(**fields))
    kit = peftkit.get_peft_model(copy.deepcopy(base), getattr(peftkit, config_class)(**fields))
    kit.load_state_dict(ref.state_dict())
    return kit.train(), ref.train()


def run(settings: Settings) -> list[Row]:
    shape, ids = preset_batch(settings)
    base = build_model(shape.model, device=settings.device)
    models: dict[str, nn.Module] = {FLOOR: frozen_floor(base).train()}
    agree = {}
    for method, config_class in METHODS.items():
        kit, ref = pair(base, config_class)
        agree[method] = same_loss_and_grads(kit, ref, ids)
        models[f"{PEFTKIT} {method}"], models[f"{PEFT} {method}"] = kit, ref
    cases = {name: Case(run=lambda m=m: step(m, ids), prepare=lambda m=m: zero_grads(m)) for name, m in models.items()}
    times = interleaved(settings, cases)
    memory = {name: activation_mib(m, ids) for name, m in models.items()}
    what = f"{shape.model.describe()}; batch {shape.batch} x {shape.seq} tokens; r=8 all-linear"
    rows = []
    for method in METHODS:
        kit, ref = f"{PEFTKIT} {method}", f"{PEFT} {method}"
        rows.append(times.row(f"{method} train step", agree[method], what, (kit, ref, FLOOR)))
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
