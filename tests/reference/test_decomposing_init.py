"""PiSSA / OLoRA initialisation: the base keeps the residual, so ``W_res + s B A == W`` and the model's
output is unchanged right after ``get_peft_model``."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import peftkit as peft


def reconstructed(residual, A, B, s, fan_in_fan_out=False):
    """Oracle: the original weight rebuilt from the residual base and the adapter factors."""
    delta = s * (B @ A)
    return residual + (delta.T if fan_in_fan_out else delta)


LAYERS = {"linear": lambda: nn.Linear(8, 6), "conv1d": lambda: Conv1D(6, 8)}


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_4", "olora"])
@pytest.mark.parametrize("kind", list(LAYERS))
def test_residual_plus_adapter_equals_original(kind: str, init: str) -> None:
    model = nn.Sequential(LAYERS[kind]())
    original = model[0].weight.detach().clone()
    x = torch.randn(3, 8)
    expected = model(x).detach()
    config = peft.LoraConfig(target_modules=["0"], r=3, lora_alpha=6, init_lora_weights=init)
    peft_model = peft.get_peft_model(model, config)
    layer = peft_model.base_model.model[0]
    A, B = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()
    residual = layer.get_base_layer().weight.detach()
    assert not torch.allclose(residual, original), "the base must hold the residual, not the original weight"
    assert B.abs().sum() > 0 and A.abs().sum() > 0
    torch.testing.assert_close(reconstructed(residual, A, B, 2.0, kind == "conv1d"), original, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(peft_model(x), expected, rtol=1e-5, atol=1e-5)
