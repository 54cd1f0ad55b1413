"""Fixtures of the unit tests: a tiny llama-shaped toy model and a "model unchanged" snapshot."""

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


def _snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "types": [(name, type(module)) for name, module in model.named_modules()],
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "grads": {name: p.requires_grad for name, p in model.named_parameters()},
        "configs": sorted(getattr(model, "peft_config", {}) or {}),
        "active": getattr(model, "active_adapter", None) if hasattr(model, "peft_config") else None,
    }


@pytest.fixture
def unchanged() -> Any:
    """``check = unchanged(model)`` snapshots ``model``; ``check()`` asserts it is exactly as it was."""

    def take(model: nn.Module) -> Any:
        before = _snapshot(model)

        def check() -> None:
            after = _snapshot(model)
            assert after["types"] == before["types"]
            assert after["state"].keys() == before["state"].keys()
            for key, tensor in before["state"].items():
                assert torch.equal(after["state"][key], tensor), key
            assert after["grads"] == before["grads"]
            assert after["configs"] == before["configs"]
            assert after["active"] == before["active"]

        return check

    return take
