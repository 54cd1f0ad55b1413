"""The one-adapter inference path (``fast_paths.single_adapter`` -> ``inference_single``) against the plain
formula ``y = base(x) + s * x A^T B^T`` and the reference peft, and against every change its kept plan must
notice: weights edited in place or replaced (through a module, an attribute, or the ``_parameters`` dict),
another adapter, new scalings (numbers and hot-swap tensors), deletes, hooks on the base, dropout in training
mode, half-precision inputs and gradients."""

from __future__ import annotations

import copy

import peft as ref_peft
import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import peftkit as peft
from peftkit.methods.lora import fast_paths
from peftkit.methods.lora.layer_spec import LoraLayerSpec

RANKS = {"a": 3, "b": 2, "c": 5}
LAYERS = {"linear": lambda: nn.Linear(6, 5), "conv1d": lambda: Conv1D(5, 6)}  # Conv1D(nf=out, nx=in)


def layer_with_adapters(kind: str, dropout: float = 0.0) -> nn.Module:
    """A LoRA layer over ``kind`` with three random adapters of different ranks and alphas, frozen, eval mode."""
    torch.manual_seed(0)
    model = None
    for name, r in RANKS.items():
        config = peft.LoraConfig(
            target_modules=["0"], r=r, lora_alpha=2 * r + 1, lora_dropout=dropout, init_lora_weights=False
        )
        if model is None:
            model = peft.get_peft_model(nn.Sequential(LAYERS[kind]()), config, adapter_name=name)
        else:
            model.add_adapter(name, config)
    assert model is not None
    layer = model.base_model.model[0].eval()
    layer.set_adapter("b", trainable=False)
    return layer


def formula(layer: nn.Module, x: torch.Tensor, adapter: str) -> torch.Tensor:
    """``x W^T + b + s x A^T B^T`` from the layer's tensors, in plain torch (``s`` read from the layer)."""
    base = layer.get_base_layer()
    weight = base.weight.T if layer.fan_in_fan_out else base.weight
    A, B = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    return x @ weight.T + base.bias + layer.scaling[adapter] * (x @ A.T @ B.T)


def inputs(seed: int, batch: int = 4) -> torch.Tensor:
    return torch.randn(batch, 3, 6, generator=torch.Generator().manual_seed(seed))


def run(layer: nn.Module, x: torch.Tensor, adapter: str = "b") -> torch.Tensor:
    """The layer's one-adapter path, asserting that it took the inference path with the plan it keeps."""
    out = fast_paths.single_adapter(layer, x, adapter)
    assert out is not None
    plan = layer.__dict__["_single_plan"]
    assert plan.adapter == adapter and plan.params_a is not None
    direct = fast_paths.inference_single(layer, plan, x)
    assert direct is not None, "a frozen adapter at inference takes the inference path"
    torch.testing.assert_close(out, direct, rtol=0, atol=0)
    return out


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_inference_path_equals_formula_and_the_reference(kind: str) -> None:
    layer = layer_with_adapters(kind)
    x = inputs(1)
    with torch.no_grad():
        torch.testing.assert_close(run(layer, x), formula(layer, x, "b"))
    base = nn.Sequential(copy.deepcopy(layer.get_base_layer()))
    config = ref_peft.LoraConfig(
        target_modules=["0"], r=RANKS["b"], lora_alpha=2 * RANKS["b"] + 1, fan_in_fan_out=kind == "conv1d"
    )
    reference = ref_peft.get_peft_model(base, config, adapter_name="b").eval()
    with torch.no_grad():
        reference.base_model.model[0].lora_A["b"].weight.copy_(layer.lora_A["b"].weight)
        reference.base_model.model[0].lora_B["b"].weight.copy_(layer.lora_B["b"].weight)
        torch.testing.assert_close(layer(x), reference(x))


def test_the_kept_plan_follows_every_change() -> None:
    layer = layer_with_adapters("linear")
    x = inputs(2)
    with torch.no_grad():
        run(layer, x)  # the plan is kept from here on
        layer.lora_A["b"].weight.mul_(-2.0)  # in place
        torch.testing.assert_close(run(layer, x), formula(layer, x, "b"))
        layer.lora_B["b"] = nn.Linear(2, 5, bias=False)  # a replaced factor module
        torch.testing.assert_close(run(layer, x), formula(layer, x, "b"))
        layer.lora_A["b"].weight = nn.Parameter(torch.randn(2, 6), requires_grad=False)  # a replaced weight
        torch.testing.assert_close(run(layer, x), formula(layer, x, "b"))
        layer.lora_B["b"]._parameters["weight"] = nn.Parameter(torch.randn(5, 2), requires_grad=False)  # as FSDP
        torch.testing.assert_close(run(layer, x), formula(layer, x, "b"))
        layer.set_scale("b", 3.0)
        torch.testing.assert_close(run(layer, x), formula(layer, x, "b"))
        layer.set_adapter("c", trainable=False)
        torch.testing.assert_close(layer(x), formula(layer, x, "c"))
        layer.get_base_layer().weight.add_(1.0)  # the base edited in place
        torch.testing.assert_close(layer(x), formula(layer, x, "c"))


def test_a_deleted_and_re_added_adapter_is_read_afresh() -> None:
    layer = layer_with_adapters("linear")
    x = inputs(3)
    with torch.no_grad():
        run(layer, x)
    layer.delete_adapter("b")
    assert fast_paths.single_adapter(layer, x, "b") is None  # gone: the template's path reports it
    layer.update_layer("b", LoraLayerSpec(layer.r["c"], layer.lora_alpha["c"]))  # rank 5 now
    layer.set_adapter("b", trainable=False)
    with torch.no_grad():
        layer.lora_B["b"].weight.normal_()
        assert layer.lora_A["b"].weight.shape[0] == RANKS["c"]
        torch.testing.assert_close(run(layer, x), formula(layer, x, "b"))


def test_tensor_scalings_hooks_and_half_precision_take_the_formula() -> None:
    layer = layer_with_adapters("linear")
    x = inputs(4)
    with torch.no_grad():
        run(layer, x)
        layer.scaling["b"] = torch.tensor(0.75)  # as prepare_model_for_compiled_hotswap leaves it
        torch.testing.assert_close(run(layer, x), formula(layer, x, "b"))
        layer.scaling["b"] = 0.5
        base, seen = layer.get_base_layer(), []
        doubling = base.register_forward_hook(lambda _m, _i, out: out * 2)
        keeping = base.register_forward_hook(lambda _m, _i, out: seen.append(out))  # keeps the output it returns
        plain = 2 * (x @ base.weight.T + base.bias)
        want = plain + 0.5 * (x @ layer.lora_A["b"].weight.T @ layer.lora_B["b"].weight.T)
        torch.testing.assert_close(run(layer, x), want)  # the hooks ran on the base
        torch.testing.assert_close(seen[0], plain)  # and what they kept was not changed in place afterwards
        doubling.remove(), keeping.remove()
        layer.get_base_layer().to(torch.bfloat16)  # a half-precision base, float32 adapters
        half = x.to(torch.bfloat16)
        torch.testing.assert_close(run(layer, half), layer.adapted_forward(half, ["b"]), rtol=0, atol=0)


def test_dropout_in_training_and_recorded_gradients_leave_the_inference_path() -> None:
    layer = layer_with_adapters("linear", dropout=0.5)
    x = inputs(5)
    plan = fast_paths.single_plan(layer, "b")
    with torch.no_grad():
        torch.testing.assert_close(run(layer, x), formula(layer, x, "b"))  # eval: dropout is the identity
        layer.train()
        assert fast_paths.inference_single(layer, plan, x) is None  # each call draws its own mask
        layer.lora_dropout["b"].p = 0.0
        assert fast_paths.inference_single(layer, plan, x) is not None
    layer.set_adapter("b")  # trainable: the fused autograd path
    assert fast_paths.inference_single(layer, plan, x) is None
    assert fast_paths.single_adapter(layer, x, "b") is not None


def test_gradients_through_a_trainable_base_equal_the_formula() -> None:
    layer = layer_with_adapters("linear")
    base = layer.get_base_layer()
    base.weight.requires_grad_(True)  # frozen adapter, trainable base: the inference path, under autograd
    x = inputs(6)
    out = run(layer, x)
    torch.testing.assert_close(out, formula(layer, x, "b"))
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
    (got,) = torch.autograd.grad(out, (base.weight,), grad)
    (want,) = torch.autograd.grad(formula(layer, x, "b"), (base.weight,), grad)
    torch.testing.assert_close(got, want)


def test_long_inputs_take_the_fused_path_with_the_same_result() -> None:
    layer = layer_with_adapters("linear")
    x = torch.randn(2, fast_paths.INFERENCE_MAX_ROWS, 6, generator=torch.Generator().manual_seed(8))
    plan = fast_paths.single_plan(layer, "b")
    with torch.no_grad():
        assert fast_paths.inference_single(layer, plan, x) is None  # prefill: in-place accumulation pays there
        out = fast_paths.single_adapter(layer, x, "b")
        assert out is not None
        torch.testing.assert_close(out, formula(layer, x, "b"))
        torch.testing.assert_close(run(layer, x[:1, :8]), formula(layer, x[:1, :8], "b"))


class DoublingLinear(nn.Linear):
    """An ``nn.Linear`` subclass whose forward differs from ``F.linear``: the direct path must step aside."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


def test_a_plain_linear_base_is_computed_in_place_of_its_module_call() -> None:
    layer = layer_with_adapters("linear")
    base, calls = layer.get_base_layer(), []
    x = inputs(9)
    with torch.no_grad():
        torch.testing.assert_close(run(layer, x), formula(layer, x, "b"))
        torch.testing.assert_close(run(layer, x[0, 0]), formula(layer, x[0, 0], "b"))  # one unbatched row
        base.bias = None  # a base without bias
        want = x @ base.weight.T + layer.scaling["b"] * (x @ layer.lora_A["b"].weight.T @ layer.lora_B["b"].weight.T)
        torch.testing.assert_close(run(layer, x), want)
        handle = base.register_forward_pre_hook(lambda _m, _i: calls.append(1))  # registered after the plan
        torch.testing.assert_close(run(layer, x), want)
        assert calls == [1, 1], "a hooked base is called as a module (run calls the path twice)"
        handle.remove()
        subclassed = DoublingLinear(6, 5)
        layer.base_layer = subclassed
        sub_want = subclassed(x) + layer.scaling["b"] * (x @ layer.lora_A["b"].weight.T @ layer.lora_B["b"].weight.T)
        torch.testing.assert_close(run(layer, x), sub_want)


def test_the_direct_path_equals_the_reference_on_a_decoder_step() -> None:
    layer = layer_with_adapters("linear")
    base = nn.Sequential(copy.deepcopy(layer.get_base_layer()))
    config = ref_peft.LoraConfig(target_modules=["0"], r=RANKS["c"], lora_alpha=2 * RANKS["c"] + 1)
    reference = ref_peft.get_peft_model(base, config, adapter_name="c").eval()
    layer.set_adapter("c", trainable=False)
    with torch.no_grad():
        reference.base_model.model[0].lora_A["c"].weight.copy_(layer.lora_A["c"].weight)
        reference.base_model.model[0].lora_B["c"].weight.copy_(layer.lora_B["c"].weight)
        for seed in range(3):  # one new token per step, as in decoding
            x = torch.randn(2, 1, 6, generator=torch.Generator().manual_seed(20 + seed))
            torch.testing.assert_close(run(layer, x, "c"), reference(x))
