"""LoRA on ``nn.Linear`` and GPT-2 ``Conv1D`` against the formula ``y = x W^T + b + s * x A^T B^T``.

The oracle is plain torch on copies of the layer's tensors; gradients of ``A`` and ``B`` are compared with
autograd through the oracle. Merging is checked against ``W' = W + s B A`` (transposed for Conv1D).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import peftkit as peft


def lora_linear(x, W, b, A, B, s, lora_b=None, fan_in_fan_out=False):
    """Oracle: ``x W^T + b + s * (x A^T B^T + b_B)``; ``W`` is ``(in, out)`` when ``fan_in_fan_out``."""
    W = W.T if fan_in_fan_out else W
    y = x @ W.T + (0 if b is None else b)
    lora = x @ A.T @ B.T + (0 if lora_b is None else lora_b)
    return y + s * lora


def merged_linear(W, b, A, B, s, lora_b=None, fan_in_fan_out=False):
    """Oracle of the merged weight and bias: ``W + s B A`` (``(s B A)^T`` for Conv1D), ``b + s b_B``."""
    delta = s * (B @ A)
    W2 = W + (delta.T if fan_in_fan_out else delta)
    b2 = None if b is None else b + (0 if lora_b is None else s * lora_b)
    return W2, b2


LAYERS = {"linear": lambda: nn.Linear(6, 5), "conv1d": lambda: Conv1D(5, 6)}  # Conv1D(nf=out, nx=in)
SETTINGS = [
    {"r": 3, "lora_alpha": 5},
    {"r": 4, "lora_alpha": 3, "use_rslora": True},
    {"r": 2, "lora_alpha": 7, "lora_bias": True},
]


def scaling(cfg: dict) -> float:
    return cfg["lora_alpha"] / (math.sqrt(cfg["r"]) if cfg.get("use_rslora") else cfg["r"])


def build(kind: str, cfg: dict):
    model = peft.get_peft_model(
        nn.Sequential(LAYERS[kind]()), peft.LoraConfig(target_modules=["0"], init_lora_weights=False, **cfg)
    )
    layer = model.base_model.model[0]
    if cfg.get("lora_bias"):
        with torch.no_grad():
            layer.lora_B["default"].bias.normal_()
    return model, layer


def tensors(layer) -> dict:
    base = layer.get_base_layer()
    lora_b = layer.lora_B["default"].bias
    return {
        "W": base.weight.detach().clone(),
        "b": base.bias.detach().clone(),
        "A": layer.lora_A["default"].weight.detach().clone().requires_grad_(True),
        "B": layer.lora_B["default"].weight.detach().clone().requires_grad_(True),
        "lora_b": None if lora_b is None else lora_b.detach().clone(),
    }


@pytest.mark.parametrize("cfg", SETTINGS, ids=["plain", "rslora", "lora_bias"])
@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_forward_and_gradients_match_formula(kind: str, cfg: dict, mode: str) -> None:
    model, layer = build(kind, cfg)
    model.train(mode == "train")
    t = tensors(layer)
    x = torch.randn(2, 3, 6)
    expected = lora_linear(x, t["W"], t["b"], t["A"], t["B"], scaling(cfg), t["lora_b"], kind == "conv1d")
    out = model(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out, layer.get_base_layer()(x)), "the adapter must change the output"

    grad_out = torch.randn_like(out)
    (out * grad_out).sum().backward()
    (expected * grad_out).sum().backward()
    torch.testing.assert_close(layer.lora_A["default"].weight.grad, t["A"].grad)
    torch.testing.assert_close(layer.lora_B["default"].weight.grad, t["B"].grad)
    assert layer.get_base_layer().weight.grad is None


@pytest.mark.parametrize("cfg", SETTINGS, ids=["plain", "rslora", "lora_bias"])
@pytest.mark.parametrize("kind", list(LAYERS))
def test_merged_weight_matches_formula(kind: str, cfg: dict) -> None:
    model, layer = build(kind, cfg)
    model.eval()
    t = tensors(layer)
    x = torch.randn(4, 6)
    before = model(x)
    model.merge_adapter()
    A, B = t["A"].detach(), t["B"].detach()
    W2, b2 = merged_linear(t["W"], t["b"], A, B, scaling(cfg), t["lora_b"], kind == "conv1d")
    base = layer.get_base_layer()
    torch.testing.assert_close(base.weight, W2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(base.bias, b2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    model.unmerge_adapter()
    torch.testing.assert_close(base.weight, t["W"], rtol=0, atol=1e-6)
    torch.testing.assert_close(base.bias, t["b"], rtol=0, atol=1e-6)


def test_delta_weight_is_scaled_product() -> None:
    _, layer = build("linear", {"r": 3, "lora_alpha": 5})
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    torch.testing.assert_close(layer.get_delta_weight("default"), (5 / 3) * B @ A)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_dropout_is_off_in_eval_mode(kind: str) -> None:
    cfg = {"r": 3, "lora_alpha": 5, "lora_dropout": 0.5}
    model, layer = build(kind, cfg)
    t = tensors(layer)
    x = torch.randn(8, 6)
    expected = lora_linear(x, t["W"], t["b"], t["A"], t["B"], scaling(cfg), None, kind == "conv1d")
    torch.testing.assert_close(model.eval()(x), expected.detach(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(model.train()(x), expected), "dropout must act on the adapter input in training"
