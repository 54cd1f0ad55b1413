"""LoRA on ``nn.Conv2d``: the adapter equals a convolution with the delta kernel ``s * B_flat @ A_flat``.

``A (r, in, kh, kw)`` carries the base kernel size, stride, padding and dilation; ``B (out, r, 1, 1)``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import peftkit as peft


def delta_kernel(A, B, s):
    """Oracle: ``s * (B_flat @ A_flat)`` reshaped to ``(out, in, kh, kw)``."""
    return s * (B.flatten(1) @ A.flatten(1)).view(B.shape[0], *A.shape[1:])


def lora_conv2d(x, conv: nn.Conv2d, W, b, A, B, s):
    """Oracle: ``conv(x, W) + b + conv(x, delta_kernel)`` with the base layer's geometry."""
    geometry = {"stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation}
    return F.conv2d(x, W, b, **geometry) + F.conv2d(x, delta_kernel(A, B, s), None, **geometry)


def build():
    config = peft.LoraConfig(target_modules=["0"], r=2, lora_alpha=3, init_lora_weights=False)
    model = peft.get_peft_model(nn.Sequential(nn.Conv2d(3, 4, kernel_size=3, stride=2, padding=1, dilation=1)), config)
    return model, model.base_model.model[0]


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_forward_and_gradients_match_formula(mode: str) -> None:
    model, layer = build()
    model.train(mode == "train")
    base = layer.get_base_layer()
    W, b = base.weight.detach().clone(), base.bias.detach().clone()
    A = layer.lora_A["default"].weight.detach().clone().requires_grad_(True)
    B = layer.lora_B["default"].weight.detach().clone().requires_grad_(True)
    x = torch.randn(2, 3, 7, 7)
    expected = lora_conv2d(x, base, W, b, A, B, 1.5)
    out = model(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, base(x))

    grad_out = torch.randn_like(out)
    (out * grad_out).sum().backward()
    (expected * grad_out).sum().backward()
    torch.testing.assert_close(layer.lora_A["default"].weight.grad, A.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.lora_B["default"].weight.grad, B.grad, rtol=1e-5, atol=1e-5)


def test_merged_kernel_matches_formula() -> None:
    model, layer = build()
    model.eval()
    base = layer.get_base_layer()
    W = base.weight.detach().clone()
    A, B = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()
    x = torch.randn(2, 3, 5, 5)
    before = model(x)
    model.merge_adapter()
    torch.testing.assert_close(base.weight, W + delta_kernel(A, B, 1.5))
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    model.unmerge_adapter()
    torch.testing.assert_close(base.weight, W, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "conv",
    [
        lambda: nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
        lambda: nn.Conv2d(3, 4, 3, padding=2, padding_mode="circular"),
        lambda: nn.Conv2d(3, 4, 3, padding=2, dilation=2),
    ],
    ids=["reflect", "circular", "dilated"],
)
def test_padding_mode_and_dilation_follow_the_base(conv) -> None:
    """``lora_A`` pads and dilates like the base, so the unmerged output is the merged kernel's (the oracle):
    ``conv_mode(x, W + delta) + b``."""
    model = peft.get_peft_model(nn.Sequential(conv()), peft.LoraConfig(target_modules=["0"], init_lora_weights=False))
    layer = model.base_model.model[0]
    base = layer.get_base_layer()
    A, B = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()
    x = torch.randn(2, 3, 7, 7)
    expected = base._conv_forward(x, base.weight + delta_kernel(A, B, layer.scaling["default"]), base.bias)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
        model.merge_adapter()
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
