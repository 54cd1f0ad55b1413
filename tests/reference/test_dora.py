"""DoRA against ``y = (m / ||W + s B A||_row) * (W + s B A) x + b`` with the row norm detached.

Covers ``nn.Linear`` and GPT-2 ``Conv1D`` (``W`` stored transposed), gradients of ``A``, ``B`` and the
magnitude ``m``, and the merged weight ``(m / n) * (W + s B A)``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import peftkit as peft


def dora_weight(W, A, B, m, s):
    """Oracle of the adapted weight ``(out, in)``: magnitude over the detached row norm times ``W + s B A``."""
    V = W + s * (B @ A)
    norm = V.norm(dim=1).detach()
    return (m / norm)[:, None] * V


def dora_linear(x, W, b, A, B, m, s):
    """Oracle forward: ``x W'^T + b``."""
    return x @ dora_weight(W, A, B, m, s).T + b


LAYERS = {"linear": lambda: nn.Linear(6, 5), "conv1d": lambda: Conv1D(5, 6)}


def build(kind: str):
    config = peft.LoraConfig(target_modules=["0"], r=3, lora_alpha=4, use_dora=True, init_lora_weights=False)
    model = peft.get_peft_model(nn.Sequential(LAYERS[kind]()), config)
    layer = model.base_model.model[0]
    with torch.no_grad():  # a magnitude that differs from the initial row norm
        layer.lora_magnitude_vector["default"].weight.mul_(torch.rand(5) + 0.5)
    base = layer.get_base_layer()
    W = base.weight.detach().clone()
    return (
        model,
        layer,
        {
            "W": W.T if kind == "conv1d" else W,
            "b": base.bias.detach().clone(),
            "A": layer.lora_A["default"].weight.detach().clone().requires_grad_(True),
            "B": layer.lora_B["default"].weight.detach().clone().requires_grad_(True),
            "m": layer.lora_magnitude_vector["default"].weight.detach().clone().requires_grad_(True),
        },
    )


@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_forward_and_gradients_match_formula(kind: str, mode: str) -> None:
    model, layer, t = build(kind)
    model.train(mode == "train")
    x = torch.randn(2, 3, 6)
    expected = dora_linear(x, t["W"], t["b"], t["A"], t["B"], t["m"], 4 / 3)
    out = model(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)

    grad_out = torch.randn_like(out)
    (out * grad_out).sum().backward()
    (expected * grad_out).sum().backward()
    torch.testing.assert_close(layer.lora_A["default"].weight.grad, t["A"].grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer.lora_B["default"].weight.grad, t["B"].grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer.lora_magnitude_vector["default"].weight.grad, t["m"].grad, rtol=1e-4, atol=1e-5)


def test_initial_magnitude_is_row_norm() -> None:
    config = peft.LoraConfig(target_modules=["0"], r=3, lora_alpha=4, use_dora=True, init_lora_weights=False)
    layer = peft.get_peft_model(nn.Sequential(nn.Linear(6, 5)), config).base_model.model[0]
    V = layer.get_base_layer().weight + (4 / 3) * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    torch.testing.assert_close(layer.lora_magnitude_vector["default"].weight, V.norm(dim=1))


@pytest.mark.parametrize("kind", list(LAYERS))
def test_merged_weight_matches_formula(kind: str) -> None:
    model, layer, t = build(kind)
    model.eval()
    base = layer.get_base_layer()
    x = torch.randn(4, 6)
    before = model(x)
    model.merge_adapter()
    merged = dora_weight(t["W"], t["A"].detach(), t["B"].detach(), t["m"].detach(), 4 / 3)
    torch.testing.assert_close(base.weight, merged.T if kind == "conv1d" else merged, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    model.unmerge_adapter()
    original = t["W"].T if kind == "conv1d" else t["W"]
    torch.testing.assert_close(base.weight, original, rtol=0, atol=1e-6)


def test_dropout_is_off_in_eval_mode() -> None:
    config = peft.LoraConfig(
        target_modules=["0"], r=3, lora_alpha=4, use_dora=True, lora_dropout=0.5, init_lora_weights=False
    )
    model = peft.get_peft_model(nn.Sequential(nn.Linear(6, 5)), config).eval()
    layer = model.base_model.model[0]
    W, b = layer.get_base_layer().weight, layer.get_base_layer().bias
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    m = layer.lora_magnitude_vector["default"].weight
    x = torch.randn(8, 6)
    torch.testing.assert_close(model(x), dora_linear(x, W, b, A, B, m, 4 / 3), rtol=1e-5, atol=1e-5)
