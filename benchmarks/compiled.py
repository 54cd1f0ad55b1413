"""Compiled decode: ``torch.compile`` (Inductor) of a PeftModel with one unmerged LoRA, one token after a
127-token KV cache, against the compiled bare base; then the recompiles that ``set_adapter`` and a hot-swap
cause in that compiled model (target 0; new adapter mixes are counted by the ``recompiles`` figure, whose
counting backend spares Inductor's minutes).

Each model compiles once (the prompt runs eagerly on the same module, so only the one-token step is traced).
The reference peft is not compiled here (a third Inductor compile would double the figure's time).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch._dynamo
from torch import nn
from transformers import DynamicCache

import peftkit.hotswap
from benchmarks.harness import FLOOR, PEFTKIT, Case, Row, Settings, close, interleaved
from benchmarks.loading import save_random_adapters
from benchmarks.models import SMALL, TINY, Shape, adapter_pair, add_adapters, build_model, lora_kwargs, shrink
from benchmarks.recompiles import RECOMPILES, traced_frames
from peftkit.methods.prompt.cache import cache_argument


@dataclass(frozen=True)
class CompiledShape:
    model: Shape
    seq: int
    backend: str = "inductor"


PRESETS = {
    "full": CompiledShape(shrink(SMALL, layers=2, vocab=8192), seq=128),
    "quick": CompiledShape(shrink(SMALL, layers=2, vocab=8192), seq=128),
    "tiny": CompiledShape(shrink(TINY, layers=1), seq=8, backend="eager"),  # the harness test: dynamo only
}


class CompiledDecoder:
    """``model``'s prompt run eagerly into a KV cache, then each call decodes one token through ``compiled``
    (the cache is cropped back afterwards, untimed, so every timed call sees the same shapes)."""

    def __init__(self, model: nn.Module, compiled: nn.Module, ids: torch.Tensor, cache_key: str) -> None:
        self.compiled, self.next = compiled, ids[:, -1:]
        self.cache = DynamicCache(config=model.config)
        self.kwargs = {cache_key: self.cache, "use_cache": True}
        with torch.no_grad():
            model(input_ids=ids[:, :-1], **self.kwargs)

    def decode(self) -> torch.Tensor:
        with torch.no_grad():
            return self.compiled(input_ids=self.next, **self.kwargs).logits

    def reset(self) -> None:
        self.cache.crop(-1)


def _events(kit: nn.Module, decoder: CompiledDecoder, adapter_dir: Path) -> int:
    """Recompiles across set_adapter (away and back) and a hot-swap, each followed by a compiled decode."""
    before = traced_frames()
    for name in ("other", "default"):
        kit.set_adapter(name, inference_mode=True)  # type: ignore[operator]
        decoder.decode(), decoder.reset()
    peftkit.hotswap.hotswap_adapter(kit, str(adapter_dir), adapter_name="default")
    decoder.decode(), decoder.reset()
    return traced_frames() - before


def run(settings: Settings) -> list[Row]:
    shape = PRESETS[settings.preset]
    base = build_model(shape.model, device=settings.device)
    kit, ref = adapter_pair(base, **lora_kwargs())
    add_adapters(kit, ref, ["other"], **lora_kwargs())
    kit.eval()
    kit.set_adapter("default", inference_mode=True)  # type: ignore[operator]
    peftkit.hotswap.prepare_model_for_compiled_hotswap(kit, target_rank=16)
    ids = torch.randint(0, shape.model.vocab, (1, shape.seq), generator=torch.Generator().manual_seed(0))
    ids = ids.to(settings.device)
    cache_key = cache_argument(base.forward)
    if cache_key is None:
        raise RuntimeError(f"{type(base).__name__}.forward takes no key/value cache; the decode figure needs one.")
    torch._dynamo.reset()
    decoders = {
        PEFTKIT: CompiledDecoder(kit, torch.compile(kit, backend=shape.backend), ids, cache_key),
        FLOOR: CompiledDecoder(base, torch.compile(base, backend=shape.backend), ids, cache_key),
    }
    eager = CompiledDecoder(kit, kit, ids, cache_key)
    with RECOMPILES:
        agree = close(decoders[PEFTKIT].decode(), eager.decode())  # the first call compiles
        decoders[PEFTKIT].reset(), decoders[FLOOR].decode(), decoders[FLOOR].reset()
        steady = traced_frames()
        times = interleaved(
            settings, {n: Case(run=d.decode, cleanup=d.reset) for n, d in decoders.items()}, reps=settings.reps * 10
        )
        timed_recompiles = traced_frames() - steady
        with tempfile.TemporaryDirectory(prefix="peftkit-bench-") as tmp:
            adapter_dir = save_random_adapters(base, Path(tmp), ["swapped"])["swapped"]
            events = _events(kit, decoders[PEFTKIT], adapter_dir)
    torch._dynamo.reset()
    what = f"{shape.model.describe()}; batch 1, 1 token after {shape.seq - 1} cached; r=16 all-linear, unmerged"
    return [
        Row(
            "compiled decode (1 token)",
            "ms",
            times[PEFTKIT],
            None,
            times[FLOOR],
            1.05,
            agree,
            f"torch.compile ({shape.backend}) of the PeftModel vs of the bare base; recompiles while timed "
            f"{timed_recompiles}, across set_adapter x2 + hot-swap {events}; peft not compiled; {what}",
            extra={"recompiles_timed": timed_recompiles, "recompiles_set_adapter_hotswap": events},
            samples={PEFTKIT: times.samples[PEFTKIT], FLOOR: times.samples[FLOOR]},
        ),
        Row("compiled decode: recompiles (set_adapter, hot-swap)", "count", events, None, 0, 0, None, what),
    ]
