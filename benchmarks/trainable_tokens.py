"""Training step of trainable tokens (forward + backward of the adapted embedding): peftkit swaps the trained rows
into the lookup; the reference rebuilds the whole ``V x d`` table each forward. Floor: the bare embedding lookup."""

from __future__ import annotations

import copy
import warnings

import peft
import torch
from torch import nn

import peftkit
from benchmarks.harness import FLOOR, PEFT, PEFTKIT, Case, Row, Settings, close, interleaved

#: preset -> (vocabulary, width, batch, sequence)
PRESETS = {"full": (32000, 1024, 8, 128), "quick": (8000, 512, 4, 128), "tiny": (256, 32, 2, 8)}


class Embedder(nn.Module):
    """Just the input embedding (``embed_tokens``), the module trainable tokens adapts."""

    def __init__(self, vocab: int, width: int) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, width)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(ids)


def step(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids)
    if out.requires_grad:
        out.square().mean().backward()
    return out.detach()


def run(settings: Settings) -> list[Row]:
    vocab, width, batch, seq = PRESETS[settings.preset]
    torch.manual_seed(0)
    base = Embedder(vocab, width).to(settings.device).requires_grad_(False)
    indices = list(range(0, vocab, 100))
    models: dict[str, nn.Module] = {FLOOR: base}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, lib in ((PEFTKIT, peftkit), (PEFT, peft)):
            config = lib.TrainableTokensConfig(target_modules=["embed_tokens"], token_indices=indices)
            models[name] = lib.get_peft_model(copy.deepcopy(base), config)
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0)).to(settings.device)
    agree = close(step(models[PEFTKIT], ids), step(models[PEFT], ids))
    timings = interleaved(settings, {n: Case(run=lambda m=m: step(m, ids)) for n, m in models.items()})
    return [
        Row(
            "trainable tokens train step",
            "ms",
            timings[PEFTKIT],
            timings[PEFT],
            timings[FLOOR],
            None,
            agree,
            f"embedding {vocab} x {width}, {len(indices)} trainable tokens, batch {batch} x {seq}; floor: bare lookup",
            samples=timings.triple(PEFTKIT, PEFT, FLOOR),
        )
    ]
