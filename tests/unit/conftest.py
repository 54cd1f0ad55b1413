"""Fixtures of the unit tests: a tiny llama-shaped toy model."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.q_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + torch.tanh(self.q_proj(h)) * self.v_proj(h)


class ToyLM(nn.Module):
    """Llama-like names (``layers.N.q_proj``) in 8 dimensions; ``config.model_type`` selects the defaults."""

    def __init__(self, model_type: str = "llama", dim: int = 8, vocab: int = 12) -> None:
        super().__init__()
        self.config = SimpleNamespace(model_type=model_type)
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList([Block(dim) for _ in range(2)])
        self.lm_head = nn.Linear(dim, vocab)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.embed_tokens(input_ids)
        for layer in self.layers:
            h = layer(h)
        return self.lm_head(h)


@pytest.fixture
def toy() -> Any:
    """``toy(model_type="llama")``: a fresh ToyLM, identical on every call."""

    def make(model_type: str = "llama") -> ToyLM:
        torch.manual_seed(0)
        return ToyLM(model_type).eval()

    return make
