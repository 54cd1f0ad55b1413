"""LoRA on ``nn.Embedding`` against ``y = E[x] + s * A^T[x] B^T`` and the merged table ``E + s (B A)^T``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import peftkit as peft


def lora_embedding(ids, E, A, B, s):
    """Oracle: rows of the base table plus ``s`` times rows of ``A^T`` projected by ``B^T``."""
    return E[ids] + s * (A.T[ids] @ B.T)


def merged_embedding(E, A, B, s):
    """Oracle of the merged table ``(num_embeddings, dim)``."""
    return E + s * (B @ A).T


def build(use_rslora: bool = False):
    config = peft.LoraConfig(target_modules=["0"], r=3, lora_alpha=5, use_rslora=use_rslora, init_lora_weights=False)
    model = peft.get_peft_model(nn.Sequential(nn.Embedding(11, 6)), config)
    return model, model.base_model.model[0]


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("use_rslora", [False, True])
def test_forward_and_gradients_match_formula(mode: str, use_rslora: bool) -> None:
    model, layer = build(use_rslora)
    model.train(mode == "train")
    s = 5 / (3**0.5 if use_rslora else 3)
    E = layer.get_base_layer().weight.detach().clone()
    A = layer.lora_embedding_A["default"].detach().clone().requires_grad_(True)
    B = layer.lora_embedding_B["default"].detach().clone().requires_grad_(True)
    ids = torch.tensor([[1, 4, 4, 10], [0, 2, 7, 3]])
    expected = lora_embedding(ids, E, A, B, s)
    out = model(ids)
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, E[ids])

    grad_out = torch.randn_like(out)
    (out * grad_out).sum().backward()
    (expected * grad_out).sum().backward()
    torch.testing.assert_close(layer.lora_embedding_A["default"].grad, A.grad)
    torch.testing.assert_close(layer.lora_embedding_B["default"].grad, B.grad)
    assert layer.get_base_layer().weight.grad is None


def test_merged_table_matches_formula() -> None:
    model, layer = build()
    model.eval()
    base = layer.get_base_layer()
    E = base.weight.detach().clone()
    A, B = layer.lora_embedding_A["default"].detach(), layer.lora_embedding_B["default"].detach()
    ids = torch.arange(11).view(1, -1)
    before = model(ids)
    model.merge_adapter()
    torch.testing.assert_close(base.weight, merged_embedding(E, A, B, 5 / 3))
    torch.testing.assert_close(model(ids), before)
    model.unmerge_adapter()
    torch.testing.assert_close(base.weight, E, rtol=0, atol=1e-6)
