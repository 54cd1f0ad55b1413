"""DoRA on ``nn.Embedding`` and ``nn.Conv1d/2d/3d`` against short formulas (norms detached):

* embedding: ``E' = E + s (B A)^T``, ``y = E'[x] * (m / ||E'||_col)`` with ``m (dim,)``;
* convolution: ``W' = W + s B_flat A_flat`` (out, in, *k), ``y = conv(x, (m / ||W'||_out) W') + bias`` with
  ``m`` stored ``(1, out, 1, ...)``; in training with dropout the base term sees the dropped-out input, as in PEFT.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.methods._training import adam_losses
from torch import nn

import peftkit as peft

CONVS = {
    "conv1d": lambda: nn.Conv1d(3, 4, 3, padding=1),
    "conv2d": lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1),
    "conv3d": lambda: nn.Conv3d(3, 4, 2),
}
MAGNITUDE = "base_model.model.0.lora_magnitude_vector.default.weight"
INPUTS = {"conv1d": (2, 3, 7), "conv2d": (2, 3, 6, 6), "conv3d": (2, 3, 4, 4, 4)}


def build(base: nn.Module, **extra: object) -> tuple[peft.PeftModel, nn.Module]:
    config = peft.LoraConfig(target_modules=["0"], r=2, lora_alpha=3, use_dora=True, init_lora_weights=False, **extra)
    model = peft.get_peft_model(nn.Sequential(base), config)
    layer = model.base_model.model[0]
    with torch.no_grad():  # a magnitude that differs from the initial norm
        magnitude = layer.lora_magnitude_vector["default"].weight
        magnitude.mul_(torch.rand_like(magnitude) + 0.5)
    return model, layer


def embedding_oracle(
    ids: torch.Tensor, E: torch.Tensor, A: torch.Tensor, B: torch.Tensor, m: torch.Tensor
) -> torch.Tensor:
    table = E + 1.5 * (B @ A).T
    return table[ids] * (m / table.norm(dim=0).detach())


def conv_weight_oracle(W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    V = W + 1.5 * (B.flatten(1) @ A.flatten(1)).view_as(W)
    factor = m.flatten() / V.flatten(1).norm(dim=1).detach()
    return factor.view(-1, *[1] * (W.dim() - 1)) * V


def backward_both(out: torch.Tensor, expected: torch.Tensor) -> None:
    """Back-propagate one random cotangent through the layer's output and through the oracle's."""
    grad = torch.randn_like(out)
    (out * grad).sum().backward()
    (expected * grad).sum().backward()


def test_embedding_magnitude_forward_gradients_and_merge() -> None:
    model, layer = build(nn.Embedding(10, 6))
    E = layer.get_base_layer().weight.detach().clone()
    A = layer.lora_embedding_A["default"].detach().clone().requires_grad_(True)
    B = layer.lora_embedding_B["default"].detach().clone().requires_grad_(True)
    m = layer.lora_magnitude_vector["default"].weight.detach().clone().requires_grad_(True)
    assert m.shape == (6,)
    ids = torch.randint(0, 10, (3, 5))
    expected = embedding_oracle(ids, E, A, B, m)
    out = model(ids)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    backward_both(out, expected)
    torch.testing.assert_close(layer.lora_magnitude_vector["default"].weight.grad, m.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(layer.lora_embedding_A["default"].grad, A.grad, atol=1e-5, rtol=1e-4)
    model.merge_adapter()
    table = E + 1.5 * (B @ A).T
    torch.testing.assert_close(layer.get_base_layer().weight, table * (m / table.norm(dim=0)), atol=1e-5, rtol=1e-5)
    model.unmerge_adapter()
    torch.testing.assert_close(layer.get_base_layer().weight, E, atol=1e-5, rtol=1e-5)


def test_embedding_initial_magnitude_is_the_column_norm() -> None:
    config = peft.LoraConfig(target_modules=["0"], r=2, use_dora=True, init_lora_weights=False)
    layer = peft.get_peft_model(nn.Sequential(nn.Embedding(10, 6)), config).base_model.model[0]
    table = layer.get_base_layer().weight + layer.get_delta_weight("default")
    torch.testing.assert_close(layer.lora_magnitude_vector["default"].weight, table.norm(dim=0))


@pytest.mark.parametrize("kind", list(CONVS))
def test_conv_forward_gradients_merge_and_magnitude_shape(kind: str) -> None:
    model, layer = build(CONVS[kind]())
    base = layer.get_base_layer()
    W, b = base.weight.detach().clone(), base.bias.detach().clone()
    A = layer.lora_A["default"].weight.detach().clone().requires_grad_(True)
    B = layer.lora_B["default"].weight.detach().clone().requires_grad_(True)
    m = layer.lora_magnitude_vector["default"].weight.detach().clone().requires_grad_(True)
    assert m.shape == (1, 4, *[1] * (W.dim() - 2))
    x = torch.randn(INPUTS[kind])
    expected = base._conv_forward(x, conv_weight_oracle(W, A, B, m), b)
    out = model(x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    backward_both(out, expected)
    torch.testing.assert_close(layer.lora_magnitude_vector["default"].weight.grad, m.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(layer.lora_B["default"].weight.grad, B.grad, atol=1e-5, rtol=1e-4)
    model.merge_adapter()
    torch.testing.assert_close(base.weight, conv_weight_oracle(W, A, B, m), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    model.unmerge_adapter()
    torch.testing.assert_close(base.weight, W, atol=1e-5, rtol=1e-5)


def test_conv_training_with_dropout_uses_the_dropped_input_for_the_base_term() -> None:
    model, layer = build(nn.Conv2d(3, 4, 3, padding=1), lora_dropout=0.5)
    model.train()
    base = layer.get_base_layer()
    W, b, A, B = base.weight, base.bias, layer.lora_A["default"].weight, layer.lora_B["default"].weight
    m = layer.lora_magnitude_vector["default"].weight
    x = torch.randn(2, 3, 5, 5)
    torch.manual_seed(7)
    out = model(x)
    torch.manual_seed(7)
    dropped = F.dropout(x, 0.5, training=True)
    factor = (m.flatten() / (W + 1.5 * (B.flatten(1) @ A.flatten(1)).view_as(W)).flatten(1).norm(dim=1)).view(
        1, -1, 1, 1
    )
    lora = 1.5 * F.conv2d(F.conv2d(dropped, A, padding=1), B)
    plain = F.conv2d(x, W, b, padding=1)
    expected = plain + (factor - 1) * F.conv2d(dropped, W, padding=1) + factor * lora
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_dora_layers_train_with_the_base_bit_identical() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Embedding(10, 6), nn.Conv1d(6, 6, 3, padding=1))
    config = peft.LoraConfig(target_modules=["0", "1"], r=2, use_dora=True)
    model = peft.get_peft_model(net, config)
    base = {k: v.clone() for k, v in model.named_parameters() if "base_layer" in k}
    initial = dict(model.named_parameters())[MAGNITUDE].detach().clone()
    ids, target = torch.randint(0, 10, (4, 5)), torch.randn(4, 5, 6)
    embedding, conv = model.base_model.model

    def loss() -> torch.Tensor:
        return (conv(embedding(ids).transpose(1, 2)).transpose(1, 2) - target).pow(2).mean()

    losses = adam_losses(model, loss, steps=6, lr=0.05)
    assert losses[-1] < losses[0]
    params = dict(model.named_parameters())
    assert all(torch.equal(v, params[k]) for k, v in base.items())
    assert not torch.equal(params[MAGNITUDE], initial)  # the magnitude trains
