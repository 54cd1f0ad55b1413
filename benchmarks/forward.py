"""Unmerged inference forward with one active adapter: decode (1 new token after a 127-token KV cache) and
prefill (128 tokens, no cache). Floor: the bare base model on the same input."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache

from benchmarks.harness import FLOOR, PEFT, PEFTKIT, Case, Row, Settings, close, interleaved
from benchmarks.models import SMALL, TINY, Shape, adapter_pair, build_model, lora_kwargs
from peftkit.methods.prompt.cache import cache_argument


@dataclass(frozen=True)
class ForwardShape:
    model: Shape
    seq: int


PRESETS = {
    "full": ForwardShape(SMALL, seq=128),
    "quick": ForwardShape(SMALL, seq=128),
    "tiny": ForwardShape(TINY, seq=8),
}


class Decoder:
    """One model with a KV cache of ``seq - 1`` tokens; each call decodes the next token and the cache is
    cropped back afterwards (untimed). ``cache_key``: the keyword the base model's forward takes the cache by;
    ``adapter_names``: one adapter per sample (a mixed batch), or ``None`` for the active adapter."""

    def __init__(
        self, model: nn.Module, ids: torch.Tensor, cache_key: str, adapter_names: list[str] | None = None
    ) -> None:
        self.model, self.prefix, self.next = model, ids[:, :-1], ids[:, -1:]
        self.cache = DynamicCache(config=model.config)
        self.kwargs = {cache_key: self.cache, "use_cache": True}
        if adapter_names is not None:
            self.kwargs["adapter_names"] = adapter_names
        with torch.no_grad():
            model(input_ids=self.prefix, **self.kwargs)

    def decode(self) -> torch.Tensor:
        with torch.no_grad():
            return self.model(input_ids=self.next, **self.kwargs).logits

    def reset(self) -> None:
        self.cache.crop(-1)


def prefill(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def run(settings: Settings) -> list[Row]:
    shape = PRESETS[settings.preset]
    base = build_model(shape.model, device=settings.device)
    kit, ref = adapter_pair(base, **lora_kwargs())
    kit.eval(), ref.eval()
    ids = torch.randint(0, shape.model.vocab, (1, shape.seq), generator=torch.Generator().manual_seed(0))
    ids = ids.to(settings.device)
    models = {PEFTKIT: kit, PEFT: ref, FLOOR: base}
    cache_key = cache_argument(base.forward)
    if cache_key is None:
        raise RuntimeError(f"{type(base).__name__}.forward takes no key/value cache; the decode figure needs one.")
    decoders = {name: Decoder(m, ids, cache_key) for name, m in models.items()}
    agree_decode = close(decoders[PEFTKIT].decode(), decoders[PEFT].decode())
    for decoder in decoders.values():
        decoder.reset()
    agree_prefill = close(prefill(kit, ids), prefill(ref, ids))
    # A decode takes milliseconds: many more repetitions for the same time budget.
    decode_cases = {n: Case(run=d.decode, cleanup=d.reset) for n, d in decoders.items()}
    decode = interleaved(settings, decode_cases, reps=settings.reps * 10)
    full = interleaved(
        settings, {n: Case(run=lambda m=m: prefill(m, ids)) for n, m in models.items()}, reps=settings.reps * 2
    )
    what = f"{shape.model.describe()}; batch 1; r=16 all-linear, unmerged"
    return [
        Row(
            "decode forward (1 token)",
            "ms",
            decode[PEFTKIT],
            decode[PEFT],
            decode[FLOOR],
            1.05,
            agree_decode,
            what,
            samples=decode.triple(PEFTKIT, PEFT, FLOOR),
        ),
        Row(
            f"prefill forward ({shape.seq} tokens)",
            "ms",
            full[PEFTKIT],
            full[PEFT],
            full[FLOOR],
            None,
            agree_prefill,
            what,
            samples=full.triple(PEFTKIT, PEFT, FLOOR),
        ),
    ]
