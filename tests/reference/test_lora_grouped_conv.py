"""LoRA on grouped convolutions (``groups = g > 1``) against a formula oracle.

``A (r, in, *k)`` reads every input channel with the base kernel geometry; ``B (out, r / g, 1, ...)`` is a grouped
1x1 convolution: output channel ``o`` of group ``j`` sums rank channels ``j r/g .. (j+1) r/g - 1`` only. So

    y = conv(x, W, groups=g) + b + s * sum_{c in group(o)} B[o, c - j r/g] * conv(x, A)[c]

Such an update mixes the base's groups, so it has no grouped kernel: merging is refused and changes nothing.
DoRA's norm follows PEFT's reading of the factors: ``||W + s * reshape(reshape(B, (-1, r)) @ reshape(A, (r, -1)),
W.shape)||`` per output channel.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import peftkit as peft
from peftkit.errors import ConfigError, UnsupportedError

CONVS = {
    "conv1d": (lambda: nn.Conv1d(4, 6, 3, groups=2, padding=1), (2, 4, 9), F.conv1d),
    "conv2d": (lambda: nn.Conv2d(8, 12, 3, groups=4, stride=2), (2, 8, 7, 7), F.conv2d),
    "conv3d": (lambda: nn.Conv3d(4, 4, 2, groups=4), (2, 4, 3, 4, 3), F.conv3d),
}


def oracle(x: torch.Tensor, conv: nn.Module, A: torch.Tensor, B: torch.Tensor, s: float, conv_fn) -> torch.Tensor:
    """The base conv plus ``s`` times the grouped 1x1 map of ``conv(x, A)``, written out per group."""
    geometry = {"stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation}
    base = conv_fn(x, conv.weight, conv.bias, groups=conv.groups, **geometry)
    hidden = conv_fn(x, A, None, **geometry)  # (N, r, *spatial)
    g, r = conv.groups, A.shape[0]
    per_out, per_rank = conv.out_channels // g, r // g
    parts = []
    for j in range(g):
        rank_slice = hidden[:, j * per_rank : (j + 1) * per_rank]
        weights = B[j * per_out : (j + 1) * per_out].flatten(1)  # (out/g, r/g)
        parts.append(torch.einsum("oc,nc...->no...", weights, rank_slice))
    return base + s * torch.cat(parts, dim=1)


def build(kind: str, **extra):
    factory, shape, conv_fn = CONVS[kind]
    config = peft.LoraConfig(target_modules=["0"], r=4, lora_alpha=6, init_lora_weights=False, **extra)
    with pytest.warns(UserWarning, match="groups"):
        model = peft.get_peft_model(nn.Sequential(factory()), config)
    return model, model.base_model.model[0], shape, conv_fn


@pytest.mark.parametrize("kind", sorted(CONVS))
def test_factor_shapes_forward_and_gradients_match_formula(kind: str) -> None:
    model, layer, shape, conv_fn = build(kind)
    base = layer.get_base_layer()
    A = layer.lora_A["default"].weight
    B = layer.lora_B["default"].weight
    assert A.shape == (4, base.in_channels, *base.kernel_size)
    assert B.shape == (base.out_channels, 4 // base.groups, *[1] * len(base.kernel_size))
    x = torch.randn(shape)
    A_ref, B_ref = A.detach().clone().requires_grad_(True), B.detach().clone().requires_grad_(True)
    expected = oracle(x, base, A_ref, B_ref, 1.5, conv_fn)
    out = model(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, base(x), atol=1e-3)
    grad_out = torch.randn_like(out)
    (out * grad_out).sum().backward()
    (expected * grad_out).sum().backward()
    torch.testing.assert_close(A.grad, A_ref.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(B.grad, B_ref.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", sorted(CONVS))
def test_merge_is_refused_and_changes_nothing(kind: str) -> None:
    model, layer, shape, _ = build(kind)
    weight = layer.get_base_layer().weight.detach().clone()
    x = torch.randn(shape)
    before = model(x)
    with pytest.raises(UnsupportedError, match="groups"):
        model.merge_adapter()
    with pytest.raises(UnsupportedError, match="groups"):
        model.merge_and_unload()
    assert torch.equal(layer.get_base_layer().weight, weight)
    assert layer.merged_adapters == []
    torch.testing.assert_close(model(x), before)


def test_merge_refusal_comes_before_any_layer_is_merged() -> None:
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 6, 3, groups=2))
    config = peft.LoraConfig(target_modules=["0", "1"], r=2, init_lora_weights=False)
    with pytest.warns(UserWarning, match="groups"):
        model = peft.get_peft_model(model, config)
    plain = model.base_model.model[0]
    weight = plain.get_base_layer().weight.detach().clone()
    for call in (model.merge_adapter, model.merge_and_unload, lambda: model.base_model.model[1].merge()):
        with pytest.raises(UnsupportedError):
            call()
        assert torch.equal(plain.get_base_layer().weight, weight) and plain.merged_adapters == []
    assert isinstance(model.base_model.model[1], peft.tuners.lora.LoraLayer)


def test_rank_not_a_multiple_of_groups_is_a_config_error() -> None:
    model = nn.Sequential(nn.Conv2d(8, 12, 3, groups=4))
    with pytest.raises(ConfigError, match="multiple of groups"):
        peft.get_peft_model(model, peft.LoraConfig(target_modules=["0"], r=6))
    assert isinstance(model[0], nn.Conv2d)  # nothing was injected


@pytest.mark.parametrize("kind", sorted(CONVS))
def test_dora_magnitude_and_forward_match_formula(kind: str) -> None:
    model, layer, shape, conv_fn = build(kind, use_dora=True)
    base = layer.get_base_layer()
    A, B = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()
    W = base.weight.detach()
    paired = (B.reshape(-1, 4) @ A.reshape(4, -1)).reshape(W.shape) * 1.5
    norm = (W + paired).flatten(1).norm(dim=1)
    magnitude = layer.lora_magnitude_vector["default"].weight
    assert magnitude.shape == (1, base.out_channels, *[1] * len(base.kernel_size))
    torch.testing.assert_close(magnitude.detach().flatten(), norm)  # initialised to the norm
    with torch.no_grad():
        magnitude.mul_(torch.rand_like(magnitude) + 0.5)
    x = torch.randn(shape)
    bias = base.bias.view(1, -1, *[1] * len(base.kernel_size))
    lora = oracle(x, base, A, B, 1.5, conv_fn) - conv_fn(
        x, W, base.bias, stride=base.stride, padding=base.padding, dilation=base.dilation, groups=base.groups
    )
    factor = (magnitude.detach().flatten() / norm).view_as(bias)
    no_bias = conv_fn(x, W, None, stride=base.stride, padding=base.padding, dilation=base.dilation, groups=base.groups)
    expected = factor * (no_bias + lora) + bias
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
