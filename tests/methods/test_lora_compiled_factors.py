"""Compiled LoRA inference reads factors built outside the graph by the call's entry point
(``peftkit.layers.compiled_call``): the compiled output must follow every change eager inference sees (weights
edited in place, replaced modules, new scalings, set_adapter, deleted adapters), without recompiling where the
shapes stay; a model compiled below its entry point stacks the live weights in the graph instead."""

from __future__ import annotations

import torch
from tests.methods.test_lora_stacked import IDS, logits, model_with_adapters
from tests.methods.test_lora_stacked import recompiles as recompiles  # the fixture
from torch import nn
from torch._dynamo.testing import CompileCounter

from peftkit.methods.lora.layer import Linear as LoraLinear


def lora_layers(model: nn.Module) -> list[LoraLinear]:
    return [m for m in model.modules() if isinstance(m, LoraLinear)]


def check(compiled: nn.Module, model: nn.Module) -> None:
    torch.testing.assert_close(logits(compiled, IDS), logits(model, IDS))


def test_compiled_output_follows_in_place_edits_scalings_and_switches(recompiles) -> None:
    model = model_with_adapters()
    compiled = torch.compile(model, backend=CompileCounter())
    check(compiled, model)
    assert all(layer._compiled_factors for layer in lora_layers(model))  # the prepared path ran
    settled = recompiles.count
    before = logits(model, IDS)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B.default." in name:
                param.mul_(-2)
    assert not torch.allclose(logits(model, IDS), before)
    check(compiled, model)
    for layer in lora_layers(model):
        layer.set_scale("default", 0.5)
    check(compiled, model)
    model.set_adapter("c", inference_mode=True)  # another rank: same shapes (padded to the largest rank)
    check(compiled, model)
    assert recompiles.count == settled


def test_compiled_output_follows_replaced_modules_and_deleted_adapters() -> None:
    model = model_with_adapters()
    compiled = torch.compile(model, backend=CompileCounter())
    check(compiled, model)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    old = layer.lora_B["default"]
    new = nn.Linear(old.in_features, old.out_features, bias=False)
    nn.init.normal_(new.weight)
    layer.lora_B["default"] = new
    check(compiled, model)
    model.set_adapter("b", inference_mode=True)
    model.delete_adapter("default")
    check(compiled, model)


def test_inner_model_compiled_alone_follows_in_place_edits() -> None:
    model = model_with_adapters()
    inner = model.get_base_model()
    compiled = torch.compile(inner, backend=CompileCounter())
    torch.testing.assert_close(logits(compiled, IDS), logits(model, IDS))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_A.default." in name:
                param.add_(1.0)
    torch.testing.assert_close(logits(compiled, IDS), logits(model, IDS))
    assert all(layer._compiled_factors is None for layer in lora_layers(model))  # never prepared: live weights


def test_compiled_call_that_records_adapter_gradients_uses_the_live_weights() -> None:
    model = model_with_adapters()
    model.set_adapter("default")  # trainable again, model still in eval mode
    compiled = torch.compile(model, backend=CompileCounter())

    def grads(m: nn.Module) -> dict[str, torch.Tensor]:
        model.zero_grad()
        m(input_ids=IDS).logits.square().sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    expected, got = grads(model), grads(compiled)
    assert expected and expected.keys() == got.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad)
    assert all(layer._compiled_factors is None for layer in lora_layers(model))
