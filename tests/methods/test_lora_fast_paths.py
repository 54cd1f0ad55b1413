"""Each LoRA fast path (``peftkit.methods.lora.fast_paths``) against the plain formula
``y = x W^T + b + s * x A^T B^T`` (``W`` stored ``(in, out)`` for GPT-2's ``Conv1D``), on fresh random inputs,
and ``set_scale`` / the one scaling function against ``s = alpha / r`` (``alpha / sqrt(r)`` for rsLoRA)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import peftkit as peft
from peftkit.layers.base import BASE_ADAPTER, BatchRouting
from peftkit.methods.lora import fast_paths
from peftkit.methods.lora.scaling import alpha_for_scaling, lora_scaling

RANKS = {"a": 3, "b": 2, "c": 5}
LAYERS = {"linear": lambda: nn.Linear(6, 5), "conv1d": lambda: Conv1D(5, 6)}  # Conv1D(nf=out, nx=in)


def layer_with_adapters(kind: str, use_rslora: bool = False) -> nn.Module:
    """A LoRA layer over ``kind`` with three random adapters of different ranks and alphas, eval mode."""
    torch.manual_seed(0)
    model = None
    for name, r in RANKS.items():
        config = peft.LoraConfig(
            target_modules=["0"], r=r, lora_alpha=2 * r + 1, use_rslora=use_rslora, init_lora_weights=False
        )
        if model is None:
            model = peft.get_peft_model(nn.Sequential(LAYERS[kind]()), config, adapter_name=name)
        else:
            model.add_adapter(name, config)
    assert model is not None
    return model.base_model.model[0].eval()


def formula(layer: nn.Module, x: torch.Tensor, adapters: list[str]) -> torch.Tensor:
    """``x W^T + b + sum_k s_k x A_k^T B_k^T`` from the layer's tensors, in plain torch."""
    base = layer.get_base_layer()
    weight = base.weight.T if layer.fan_in_fan_out else base.weight
    y = x @ weight.T + base.bias
    for name in adapters:
        A, B = layer.lora_A[name].weight, layer.lora_B[name].weight
        s = layer.lora_alpha[name] / (math.sqrt(layer.r[name]) if layer.use_rslora[name] else layer.r[name])
        y = y + s * (x @ A.T @ B.T)
    return y


def inputs(seed: int, batch: int = 4) -> torch.Tensor:
    return torch.randn(batch, 3, 6, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_single_adapter_path_equals_formula_with_gradients(kind: str) -> None:
    layer = layer_with_adapters(kind).train()
    layer.set_adapter("b")  # active and trainable
    x = inputs(1).requires_grad_()
    fast = fast_paths.single_adapter(layer, x, "b")
    assert fast is not None, "a plain Linear / Conv1D with one adapter takes the fused path"
    x_ref = x.detach().clone().requires_grad_()
    expected = formula(layer, x_ref, ["b"])
    torch.testing.assert_close(fast, expected)
    grad = torch.randn(fast.shape, generator=torch.Generator().manual_seed(2))
    A, B = layer.lora_A["b"].weight, layer.lora_B["b"].weight
    got = torch.autograd.grad(fast, (x, A, B), grad)
    want = torch.autograd.grad(expected, (x_ref, A, B), grad)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def test_single_adapter_path_declines_what_it_does_not_compute() -> None:
    layer = layer_with_adapters("linear")
    x = inputs(1)
    assert fast_paths.single_adapter(layer, x, "missing") is None
    assert fast_paths.single_adapter(layer, x.double(), "a") is None  # mixed dtypes
    layer.use_dora["a"] = True
    assert fast_paths.single_adapter(layer, x, "a") is None


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_stacked_mixed_batch_equals_formula_per_sample(kind: str) -> None:
    layer = layer_with_adapters(kind)
    per_sample = ["c", BASE_ADAPTER, "a", "c", "b"]
    x = inputs(3, batch=len(per_sample))
    routing = BatchRouting.from_names(per_sample, sorted(RANKS))
    with torch.no_grad():
        fast = fast_paths.stacked_mixed(layer, x, routing)
        assert fast is not None
        for i, name in enumerate(per_sample):
            want = formula(layer, x[i : i + 1], [] if name == BASE_ADAPTER else [name])
            torch.testing.assert_close(fast[i : i + 1], want)


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_compiled_path_equals_formula_for_the_active_adapters(kind: str) -> None:
    layer = layer_with_adapters(kind)
    x = inputs(4)
    for active in (["a"], ["c", "a"], []):
        layer.set_adapter(active, trainable=False)
        with torch.no_grad():
            fast = fast_paths.compiled(layer, x)
            assert fast is not None
            torch.testing.assert_close(fast, formula(layer, x, active))


def test_every_path_agrees_with_the_plain_forward() -> None:
    layer = layer_with_adapters("linear")
    x = inputs(5)
    layer.set_adapter("c", trainable=False)
    with torch.no_grad():
        plain = layer.adapted_forward(x, ["c"])
        routing = BatchRouting.from_names(["c"] * x.shape[0], sorted(RANKS))
        for fast in (
            fast_paths.single_adapter(layer, x, "c"),
            fast_paths.stacked_mixed(layer, x, routing),
            fast_paths.compiled(layer, x),
        ):
            assert fast is not None
            torch.testing.assert_close(fast, plain)


@pytest.mark.parametrize("use_rslora", [False, True])
def test_set_scale_multiplies_the_initial_scaling(use_rslora: bool) -> None:
    layer = layer_with_adapters("linear", use_rslora=use_rslora)
    x = inputs(6)
    for name, r in RANKS.items():
        alpha = 2 * r + 1
        initial = alpha / (math.sqrt(r) if use_rslora else r)
        assert layer.scaling[name] == pytest.approx(initial)
        layer.set_scale(name, 0.5)
        assert layer.scaling[name] == pytest.approx(0.5 * initial)
    with torch.no_grad():
        torch.testing.assert_close(layer.adapted_forward(x, ["b"]), _half(layer, x))


def _half(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``base(x) + 0.5 * s_b * x A^T B^T`` from the config's alpha and rank (not the layer's scaling)."""
    base = layer.get_base_layer()
    A, B = layer.lora_A["b"].weight, layer.lora_B["b"].weight
    r = RANKS["b"]
    s = (2 * r + 1) / (math.sqrt(r) if layer.use_rslora["b"] else r)
    return x @ base.weight.T + base.bias + 0.5 * s * (x @ A.T @ B.T)


@pytest.mark.parametrize("use_rslora", [False, True])
def test_scaling_and_its_inverse(use_rslora: bool) -> None:
    for r in (1, 4, 9):
        s = lora_scaling(6.0, r, use_rslora)
        assert s == pytest.approx(6.0 / (math.sqrt(r) if use_rslora else r))
        assert alpha_for_scaling(s, r, use_rslora) == pytest.approx(6.0)
