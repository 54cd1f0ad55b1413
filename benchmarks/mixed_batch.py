"""Mixed-batch inference: one adapter per sample (``adapter_names=[...]``) over 8 and 32 distinct adapters.

Floor: the same batch with one adapter active for every sample (a plain unmerged forward; the faster of the
two libraries), so the ratio says what serving many adapters at once costs over serving one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from benchmarks.harness import PEFT, PEFTKIT, Case, Row, Settings, close, interleaved
from benchmarks.models import SMALL, TINY, Shape, adapter_pair, add_adapters, build_model, lora_kwargs


@dataclass(frozen=True)
class MixedShape:
    model: Shape
    batch: int
    seq: int
    counts: tuple[int, ...]


PRESETS = {
    "full": MixedShape(SMALL, batch=32, seq=16, counts=(8, 32)),
    "quick": MixedShape(SMALL, batch=32, seq=16, counts=(8, 32)),
    "tiny": MixedShape(TINY, batch=4, seq=4, counts=(2, 4)),
}


def forward(model: nn.Module, ids: torch.Tensor, names: list[str] | None) -> torch.Tensor:
    with torch.no_grad():
        if names is None:
            return model(input_ids=ids).logits
        return model(input_ids=ids, adapter_names=names).logits


def run(settings: Settings) -> list[Row]:
    shape = PRESETS[settings.preset]
    base = build_model(shape.model, device=settings.device)
    kit, ref = adapter_pair(base, **lora_kwargs())
    most = max(shape.counts)
    extra = [f"a{i}" for i in range(1, most)]
    add_adapters(kit, ref, extra, **lora_kwargs())
    kit.eval(), ref.eval()
    ids = torch.randint(0, shape.model.vocab, (shape.batch, shape.seq), generator=torch.Generator().manual_seed(0))
    ids = ids.to(settings.device)
    adapters = ["default", *extra]
    mixes = {count: [adapters[i % count] for i in range(shape.batch)] for count in shape.counts}
    agree = {count: close(forward(kit, ids, names), forward(ref, ids, names)) for count, names in mixes.items()}
    cases = {
        "kit-one": Case(run=lambda: forward(kit, ids, None)),
        "peft-one": Case(run=lambda: forward(ref, ids, None)),
    }
    for count, names in mixes.items():
        cases[f"{PEFTKIT}-{count}"] = Case(run=lambda names=names: forward(kit, ids, names))
        cases[f"{PEFT}-{count}"] = Case(run=lambda names=names: forward(ref, ids, names))
    times = interleaved(settings, cases)
    one = {"peftkit_one_adapter": times["kit-one"], "peft_one_adapter": times["peft-one"]}
    floor = [min(a, b) for a, b in zip(times.samples["kit-one"], times.samples["peft-one"])]
    what = f"{shape.model.describe()}; batch {shape.batch} x {shape.seq} tokens"
    rows = [
        Row(
            f"mixed batch, {count} adapters",
            "ms",
            times[f"{PEFTKIT}-{count}"],
            times[f"{PEFT}-{count}"],
            min(one.values()),
            1.25 if count == 32 else None,
            agree[count],
            f"floor: one adapter for all samples, the faster library (peftkit {one['peftkit_one_adapter']:.3g} ms, "
            f"peft {one['peft_one_adapter']:.3g} ms); {what}",
            extra=dict(one),
            samples=times.triple(f"{PEFTKIT}-{count}", f"{PEFT}-{count}", floor),
        )
        for count in shape.counts
    ]
    return rows
