"""Mixed-batch inference: one adapter per sample (``adapter_names=[...]``) over 8 and 32 distinct adapters, at
decode (each sample generates its next token after a KV cache) and at prefill (the prompt, no cache).

Floor: the same batch with one adapter active for every sample (a plain unmerged forward; the faster of the
two libraries), so the ratio says what serving many adapters at once costs over serving one. The vocabulary is
8,192 so that the output layer (not adapted) does not hide the adapters' cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from benchmarks.forward import Decoder
from benchmarks.harness import PEFT, PEFTKIT, Case, Row, Settings, close, interleaved
from benchmarks.models import SMALL, TINY, Shape, adapter_pair, add_adapters, build_model, lora_kwargs, shrink
from peftkit.methods.prompt.cache import cache_argument


@dataclass(frozen=True)
class MixedShape:
    """``batch`` samples; decode: 1 new token after ``cache`` cached ones; prefill: ``prompt`` tokens."""

    model: Shape
    batch: int
    cache: int
    prompt: int
    counts: tuple[int, ...]


PRESETS = {
    "full": MixedShape(shrink(SMALL, vocab=8192), batch=32, cache=31, prompt=32, counts=(8, 32)),
    "quick": MixedShape(shrink(SMALL, vocab=8192), batch=32, cache=31, prompt=32, counts=(8, 32)),
    "tiny": MixedShape(TINY, batch=4, cache=3, prompt=4, counts=(2, 4)),
}
#: The targets for peftkit / one adapter, by the number of distinct adapters at decode.
TARGETS = {8: 1.15, 32: 1.25}


def prefill(model: nn.Module, ids: torch.Tensor, names: list[str] | None) -> torch.Tensor:
    with torch.no_grad():
        if names is None:
            return model(input_ids=ids, use_cache=False).logits
        return model(input_ids=ids, adapter_names=names, use_cache=False).logits


def _rows(
    stage: str, times: dict[str, float], samples: object, counts: tuple[int, ...], what: str, agree: dict[int, bool]
) -> list[Row]:
    """One row per adapter count; ``times`` has ``kit-one``, ``peft-one`` and ``peftkit-/peft-<count>``."""
    one = {"peftkit_one_adapter": times["kit-one"], "peft_one_adapter": times["peft-one"]}
    floor = [min(a, b) for a, b in zip(samples.samples["kit-one"], samples.samples["peft-one"])]  # type: ignore[attr-defined]
    return [
        Row(
            f"mixed batch {stage}, {count} adapters",
            "ms",
            times[f"{PEFTKIT}-{count}"],
            times[f"{PEFT}-{count}"],
            min(one.values()),
            TARGETS.get(count) if stage == "decode" else None,
            agree[count],
            f"floor: one adapter for all samples, the faster library (peftkit {one['peftkit_one_adapter']:.3g} ms, "
            f"peft {one['peft_one_adapter']:.3g} ms); {what}",
            extra=dict(one),
            samples=samples.triple(f"{PEFTKIT}-{count}", f"{PEFT}-{count}", floor),  # type: ignore[attr-defined]
        )
        for count in counts
    ]


def run(settings: Settings) -> list[Row]:
    shape = PRESETS[settings.preset]
    base = build_model(shape.model, device=settings.device)
    kit, ref = adapter_pair(base, **lora_kwargs())
    extra = [f"a{i}" for i in range(1, max(shape.counts))]
    add_adapters(kit, ref, extra, **lora_kwargs())
    kit.eval(), ref.eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, shape.model.vocab, (shape.batch, shape.cache + 1), generator=gen).to(settings.device)
    prompt = torch.randint(0, shape.model.vocab, (shape.batch, shape.prompt), generator=gen).to(settings.device)
    adapters = ["default", *extra]
    mixes = {count: [adapters[i % count] for i in range(shape.batch)] for count in shape.counts}
    cache_key = cache_argument(base.forward)
    if cache_key is None:
        raise RuntimeError(f"{type(base).__name__}.forward takes no key/value cache; the decode figure needs one.")
    variants = {"kit-one": (kit, None), "peft-one": (ref, None)}
    for count, names in mixes.items():
        variants[f"{PEFTKIT}-{count}"], variants[f"{PEFT}-{count}"] = (kit, names), (ref, names)
    decoders = {key: Decoder(m, ids, cache_key, names) for key, (m, names) in variants.items()}
    agree_decode, agree_prefill = {}, {}
    for count in shape.counts:
        kit_dec, ref_dec = decoders[f"{PEFTKIT}-{count}"], decoders[f"{PEFT}-{count}"]
        agree_decode[count] = close(kit_dec.decode(), ref_dec.decode())
        kit_dec.reset(), ref_dec.reset()
        names = mixes[count]
        agree_prefill[count] = close(prefill(kit, prompt, names), prefill(ref, prompt, names))
    # A decode step takes milliseconds: more repetitions for the same time budget.
    decode = interleaved(
        settings, {k: Case(run=d.decode, cleanup=d.reset) for k, d in decoders.items()}, reps=settings.reps * 5
    )
    full = interleaved(settings, {k: Case(run=lambda v=v: prefill(v[0], prompt, v[1])) for k, v in variants.items()})
    lora = "r=16 all-linear, unmerged"
    what_decode = f"{shape.model.describe()}; batch {shape.batch} x 1 new token after {shape.cache} cached; {lora}"
    what_prefill = f"{shape.model.describe()}; batch {shape.batch} x {shape.prompt} tokens, no cache; {lora}"
    return [
        *_rows("decode", decode, decode, shape.counts, what_decode, agree_decode),
        *_rows("prefill", full, full, shape.counts, what_prefill, agree_prefill),
    ]
