"""KaSA and MonteCLoRA against the reference on a stack of Linear layers: adding the adapter (KaSA's SVD
truncation of every base weight; MonteCLoRA's samplers), the memory a MonteCLoRA adapter holds, and its training
step (forward + backward of the output plus the variational loss).

The reference pre-draws ``buffer_size`` (150) Monte Carlo samples of ``(num_samples, in, r)`` per layer when the
adapter is added; peftkit draws each forward's samples when it runs. Floors: the base stack's deep copy (adding),
the adapter's own parameters and buffers (memory), the bare stack's forward + backward to its input (train step).
"""

from __future__ import annotations

import copy
from typing import Any

import peft
import torch
from torch import nn

import peftkit
from benchmarks.harness import FLOOR, PEFT, PEFTKIT, Case, Row, Settings, close, interleaved, square_loss_step
from benchmarks.models import StackShape, linear_stack
from benchmarks.orthogonal import PRESETS


def adapted(lib: Any, base: nn.Module, **variant: Any) -> Any:
    """``base`` (a copy) with a rank-8 LoRA variant on every layer; ``variant``: ``kasa`` or ``monteclora``."""
    targets = [str(i) for i in range(len(base))]
    kind, fields = next(iter(variant.items()))
    sub = lib.KasaConfig(**fields) if kind == "kasa" else lib.MontecloraConfig(**fields)
    config = lib.LoraConfig(target_modules=targets, r=8, init_lora_weights=False, **{f"{kind}_config": sub})
    return lib.get_peft_model(copy.deepcopy(base), config)


def held_mib(model: nn.Module) -> float:
    """MiB of the MonteCLoRA samplers' tensors: parameters, buffers and (the reference's) pre-drawn samples."""
    total = 0
    for module in model.modules():
        if type(module).__name__ != "MontecloraSampler":
            continue
        total += sum(t.nbytes for t in [*module.parameters(), *module.buffers()])
        predrawn = getattr(getattr(module, "sampler", None), "buffer", [])
        total += sum(t.nbytes for sample in predrawn for t in sample.values())
    return total / 2**20


def _adding_row(settings: Settings, base: nn.Module, name: str, variant: dict[str, Any], what: str) -> Row:
    cases = {
        PEFTKIT: Case(run=lambda: adapted(peftkit, base, **variant)),
        PEFT: Case(run=lambda: adapted(peft, base, **variant)),
        FLOOR: Case(run=lambda: copy.deepcopy(base)),
    }
    kit, ref = adapted(peftkit, base, **variant), adapted(peft, base, **variant)
    bases = [{n: p for n, p in m.named_parameters() if "lora_" not in n} for m in (kit, ref)]
    agree = all(close(bases[0][n], p) for n, p in bases[1].items())  # KaSA: the same truncated weights
    return interleaved(settings, cases, reps=max(1, settings.reps // 2)).row(f"{name}: add adapter", agree, what)


def run(settings: Settings) -> list[Row]:
    shape: StackShape = PRESETS[settings.preset]
    base = linear_stack(shape, settings.device).requires_grad_(False)
    x = torch.randn(shape.tokens, shape.width, device=settings.device, requires_grad=True)
    what = f"{shape.layers} x Linear({shape.width}), r=8, all layers adapted"
    rows = [_adding_row(settings, base, "KaSA", {"kasa": {}}, what + ", SVD of each base weight")]
    rows.append(_adding_row(settings, base, "MonteCLoRA", {"monteclora": {}}, what + ", default MontecloraConfig"))
    kit, ref = adapted(peftkit, base, monteclora={}), adapted(peft, base, monteclora={})
    ref.load_state_dict(kit.state_dict())
    floor_mib = sum(p.nbytes for n, p in kit.state_dict().items() if "monteclora" in n) / 2**20
    rows.append(Row("MonteCLoRA: memory held", "MiB", held_mib(kit), held_mib(ref), floor_mib, note=what))
    agree = close(kit.eval()(x), ref.eval()(x))  # eval: plain LoRA in both
    kit.train(), ref.train()
    models = {PEFTKIT: kit, PEFT: ref, FLOOR: base}
    times = interleaved(settings, {n: Case(run=square_loss_step(m, x)) for n, m in models.items()})
    rows.append(times.row("MonteCLoRA: train step", agree, f"{what}, {shape.tokens} tokens, + variational loss"))
    return rows
