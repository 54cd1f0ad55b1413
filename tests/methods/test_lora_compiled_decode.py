"""Compiled decode: at a few rows the LoRA products are traced as reductions that Inductor fuses
(``stacked.low_rank_product``), and the entry point re-prepares the layers only when its one flat check
(``peftkit.layers.watch.ModelWatch``) sees a change. The compiled output must equal eager inference and the
reference peft after in-place edits, scalings, switches, deletes and re-adds, and after writes that bypass
peftkit's API (a scaling, a weight, the active list of one layer), without recompiling where shapes stay."""

from __future__ import annotations

import peft
import pytest
import torch
from tests._tiny import llama_config
from tests.methods.test_lora_stacked import RANKS, model_with_adapters
from tests.methods.test_lora_stacked import recompiles as recompiles  # the fixture
from torch import nn
from torch._dynamo.testing import CompileCounter
from transformers import DynamicCache, LlamaForCausalLM

import peftkit
from peftkit.methods.lora import stacked
from peftkit.methods.lora.layer import Linear as LoraLinear
from peftkit.methods.prompt.cache import cache_argument

PROMPT = torch.randint(0, 64, (1, 6), generator=torch.Generator().manual_seed(2))
NEXT = torch.randint(0, 64, (1, 1), generator=torch.Generator().manual_seed(3))
SHORT = torch.randint(0, 64, (1, 5), generator=torch.Generator().manual_seed(4))  # 5 rows <= SMALL_ROWS


def lora_layers(model: nn.Module) -> list[LoraLinear]:
    return [m for m in model.modules() if isinstance(m, LoraLinear)]


def decode(model: nn.Module, runner: nn.Module) -> torch.Tensor:
    """One token after ``PROMPT`` (run eagerly by ``model`` into the cache) through ``runner``."""
    key = cache_argument(model.get_base_model().forward)  # ``cache`` or ``past_key_values``: what transformers takes
    assert key is not None
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        model(input_ids=PROMPT, use_cache=True, **{key: cache})
        return runner(input_ids=NEXT, use_cache=True, **{key: cache}).logits


def reference(model: peftkit.PeftModel) -> peft.PeftModel:
    """The reference peft model on the same base (same seed) holding ``model``'s adapters as they are now."""
    torch.manual_seed(0)
    ref = None
    for name, r in RANKS.items():
        if name not in model.peft_config:
            continue
        config = peft.LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=3 * r + 1, target_modules="all-linear")
        if ref is None:
            ref = peft.get_peft_model(LlamaForCausalLM(llama_config(layers=1)), config, adapter_name=name)
        else:
            ref.add_adapter(name, config)
        peft.set_peft_model_state_dict(ref, peftkit.get_peft_model_state_dict(model, adapter_name=name), name)
    assert ref is not None
    ref.set_adapter(model.active_adapter)
    return ref.eval()


def check(model: peftkit.PeftModel, compiled: nn.Module, with_reference: bool = True) -> None:
    got = decode(model, compiled)
    torch.testing.assert_close(got, decode(model, model))
    with torch.no_grad():
        torch.testing.assert_close(compiled(input_ids=SHORT).logits, model(input_ids=SHORT).logits)
    if with_reference:
        ref = reference(model)
        torch.testing.assert_close(got, decode(ref, ref))


def test_low_rank_product_equals_two_products_on_every_path() -> None:
    x, a, b = torch.randn(3, 2, 24), torch.randn(24, 6), torch.randn(6, 10)
    want = (x @ a) @ b
    torch.testing.assert_close(stacked.low_rank_product(x, a, b), want)  # 6 rows: reductions
    x_long = torch.randn(3, 4, 24)  # 12 rows: two products
    torch.testing.assert_close(stacked.low_rank_product(x_long, a, b), (x_long @ a) @ b)
    traced = torch.compile(stacked.low_rank_product, backend="inductor", fullgraph=True)
    torch.testing.assert_close(traced(x, a, b), want)


def test_inductor_decode_equals_eager_and_reference(recompiles) -> None:
    model = model_with_adapters()
    compiled = torch.compile(model)
    check(model, compiled)
    settled = recompiles.count
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B.default." in name:
                param.mul_(-2)  # in place: only the weights' versions move
    check(model, compiled)
    for layer in lora_layers(model):
        layer.set_scale("default", 0.5)
    check(model, compiled, with_reference=False)  # the reference's set_scale is not mirrored by its state dict
    model.set_adapter("c", inference_mode=True)
    check(model, compiled)
    assert recompiles.count == settled


def test_compiled_decode_after_delete_and_re_add() -> None:
    model = model_with_adapters()
    compiled = torch.compile(model, backend=CompileCounter())
    check(model, compiled)
    model.set_adapter("c", inference_mode=True)
    model.delete_adapter("b")
    check(model, compiled)
    config = peftkit.LoraConfig(r=RANKS["b"], lora_alpha=3 * RANKS["b"] + 1, target_modules="all-linear")
    model.add_adapter("b", peftkit.LoraConfig(**{**config.to_dict(), "init_lora_weights": False}))
    model.set_adapter("b", inference_mode=True)
    check(model, compiled)


@pytest.mark.parametrize("change", ["scaling", "weight", "parameters_entry", "active"])
def test_compiled_call_sees_writes_that_bypass_the_api(change: str) -> None:
    model = model_with_adapters()
    compiled = torch.compile(model, backend=CompileCounter())
    check(model, compiled, with_reference=False)
    layer = lora_layers(model)[0]
    if change == "scaling":
        layer.scaling["default"] = 0.25
    elif change == "weight":
        old = layer.lora_A["default"].weight
        layer.lora_A["default"].weight = nn.Parameter(torch.randn_like(old), requires_grad=False)
    elif change == "parameters_entry":  # as accelerate loads weights: straight into _parameters, no hook runs
        module = layer.lora_B["default"]
        module._parameters["weight"] = nn.Parameter(torch.randn_like(module.weight), requires_grad=False)
    else:
        layer.set_adapter("b", trainable=False)
    check(model, compiled, with_reference=False)


def test_layer_switched_to_training_mode_leaves_the_prepared_path() -> None:
    model = model_with_adapters()
    compiled = torch.compile(model, backend=CompileCounter())
    check(model, compiled, with_reference=False)
    layer = lora_layers(model)[0]
    layer.lora_dropout["default"] = nn.Dropout(0.5)
    layer.train()  # the model stays in eval mode: only this layer's dropout now draws masks
    with torch.no_grad():
        runs = [compiled(input_ids=SHORT).logits for _ in range(2)]
    assert not torch.equal(*runs)  # masks drawn per call (the prepared factors would give equal outputs)
    layer.eval()
    check(model, compiled, with_reference=False)


def test_unchanged_model_is_not_prepared_again(monkeypatch: pytest.MonkeyPatch) -> None:
    model = model_with_adapters()
    compiled = torch.compile(model, backend=CompileCounter())
    calls = []
    prepare = LoraLinear.prepare_compiled

    def counting(layer: LoraLinear) -> object:
        calls.append(layer)
        return prepare(layer)

    monkeypatch.setattr(LoraLinear, "prepare_compiled", counting)
    check(model, compiled, with_reference=False)
    assert calls  # prepared once
    calls.clear()
    check(model, compiled, with_reference=False)
    assert not calls  # nothing changed: one flat check, no layer called
    with torch.no_grad():
        lora_layers(model)[1].lora_B["default"].weight.add_(1.0)
    check(model, compiled, with_reference=False)
    assert len(calls) == len(lora_layers(model))  # an in-place edit: every layer checks itself again
