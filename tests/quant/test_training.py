"""Adapters on quantized bases: shapes from the logical weight, gradients equal to a dense twin's, and training
that stays right across an evaluation (train, evaluate in eval mode under no_grad, train again).

The evaluation check guards against bitsandbytes' CPU inference repack: on CPUs with AVX512-BF16 an eval-mode
no-grad forward of a ``Linear4bit`` rewrites its weight for an inference kernel (block scales rounded to
bfloat16, no gradient to the input); a model that lets it happen gets other gradients after the evaluation.
"""

from __future__ import annotations

import pytest
import torch
from tests.quant._quant_models import (
    FLOAT32_KINDS,
    KINDS,
    METHODS,
    assert_same_packed,
    load_quantized,
    packed_tensors,
    quantized_linears,
    token_batch,
)
from transformers import AutoModelForCausalLM

import peftkit
from peftkit.quant.base import backend_for


def adapter_gradients(model: torch.nn.Module, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """One training-mode forward/backward of the causal-LM loss; the gradient of every trainable tensor."""
    model.train()
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=ids).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("method", sorted(METHODS))
def test_adapter_shapes_come_from_the_logical_weight(tiny_dir, kind: str, method: str) -> None:
    model = peftkit.get_peft_model(load_quantized(tiny_dir, kind), METHODS[method]())
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    out_features, in_features = backend_for(layer.get_base_layer()).weight_shape(layer.get_base_layer())
    assert (out_features, in_features) == (64, 64)
    if method == "ia3":
        assert layer.ia3_l["default"].shape == (64, 1)
        ff = model.base_model.model.model.layers[0].mlp.down_proj
        assert ff.ia3_l["default"].shape == (1, 128)
        return
    if method in ("loha", "lokr"):
        assert layer.delta_weight("default").shape == (64, 64)
        return
    lora_A = layer.lora_A["default"]
    lora_A = lora_A if isinstance(lora_A, torch.Tensor) else lora_A.weight
    lora_B = layer.lora_B["default"]
    lora_B = lora_B if isinstance(lora_B, torch.Tensor) else lora_B.weight
    assert lora_A.shape == (4, 64) and lora_B.shape == (64, 4)


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("method", sorted(METHODS))
def test_gradients_are_the_same_after_an_evaluation(tiny_dir, kind: str, method: str) -> None:
    model = peftkit.get_peft_model(load_quantized(tiny_dir, kind), METHODS[method]())
    ids = token_batch()
    packed = {name: packed_tensors(m) for name, m in quantized_linears(model).items()}
    before = adapter_gradients(model, ids)
    assert before and all(g.abs().sum() > 0 for g in before.values()), "every adapter tensor must get a gradient"
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    for name, module in quantized_linears(model).items():
        assert_same_packed(packed[name], packed_tensors(module), f"the evaluation rewrote {name}'s weight")
    after = adapter_gradients(model, ids)
    assert after.keys() == before.keys()
    for name, grad in before.items():
        assert torch.equal(after[name], grad), name


def dense_twin(tiny_dir, quantized: torch.nn.Module) -> torch.nn.Module:
    """The float32 model with each quantized layer's weight replaced by its dequantized value."""
    dense = AutoModelForCausalLM.from_pretrained(tiny_dir)
    layers = quantized_linears(quantized)
    with torch.no_grad():
        for name, module in layers.items():
            dense.get_submodule(name).weight.copy_(backend_for(module).dequantize(module))
    return dense


@pytest.mark.parametrize("kind", FLOAT32_KINDS)
@pytest.mark.parametrize("method", ["lora", "dora-rslora"])
def test_gradients_match_the_dequantized_dense_model(tiny_dir, kind: str, method: str) -> None:
    """The adapters' gradients through a quantized base equal those through a float32 base holding the
    dequantized weights (torchao int8 runs the fused LoRA autograd path, which dequantizes for ``g W``)."""
    quantized = load_quantized(tiny_dir, kind)
    dense = dense_twin(tiny_dir, quantized)
    torch.manual_seed(3)
    quantized = peftkit.get_peft_model(quantized, METHODS[method]())
    torch.manual_seed(3)
    dense = peftkit.get_peft_model(dense, METHODS[method]())
    ids = token_batch()
    expected, actual = adapter_gradients(dense, ids), adapter_gradients(quantized, ids)
    assert actual.keys() == expected.keys()
    # 8-bit computes its matmul in float16 (bitsandbytes' dequantized weight); the others in float32.
    tolerance = {"rtol": 2e-2, "atol": 1e-3} if kind == "int8" else {"rtol": 1e-4, "atol": 1e-5}
    for name, grad in expected.items():
        torch.testing.assert_close(actual[name], grad, **tolerance, msg=name)


@pytest.mark.parametrize("kind", ["nf4", "int8", "torchao-int8"])
def test_training_lowers_the_loss_across_evaluations(tiny_dir, kind: str) -> None:
    torch.manual_seed(0)
    model = peftkit.get_peft_model(load_quantized(tiny_dir, kind), METHODS["lora"]())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    ids, losses = token_batch(), []
    for step in range(20):
        model.train()
        optimizer.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 4 == 3:
            model.eval()
            with torch.no_grad():
                model(input_ids=ids)
    assert losses[-1] < 0.85 * losses[0]


def test_unload_gives_bitsandbytes_its_inference_repack_back(tiny_dir) -> None:
    import bitsandbytes as bnb

    base = load_quantized(tiny_dir, "nf4")
    flags = {name: m.support_avx512bf16_for_cpu for name, m in base.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    model = peftkit.get_peft_model(base, METHODS["lora"]())
    assert all(not m.support_avx512bf16_for_cpu for m in quantized_linears(model).values())
    unloaded = model.unload()
    restored = {
        n: m.support_avx512bf16_for_cpu for n, m in unloaded.named_modules() if isinstance(m, bnb.nn.Linear4bit)
    }
    assert restored == flags


def test_the_repack_is_what_breaks_training_after_an_evaluation(tiny_dir) -> None:
    """Control for ``test_gradients_are_the_same_after_an_evaluation``: with bitsandbytes' repack switched back
    on, the same train / evaluate / train sequence loses or changes adapter gradients (the reference's trap)."""
    import bitsandbytes as bnb

    if not bnb.functional.has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16, so bitsandbytes never repacks 4-bit weights for inference")
    model = peftkit.get_peft_model(load_quantized(tiny_dir, "nf4"), METHODS["lora"]())
    for module in quantized_linears(model).values():
        module.support_avx512bf16_for_cpu = True
    ids = token_batch()
    before = adapter_gradients(model, ids)
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    model.train()
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=ids).loss.backward()
    after = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    assert any(after[n] is None or not torch.equal(after[n], g) for n, g in before.items())


def test_a_model_evaluated_before_the_adapter_is_unpacked_with_a_warning(tiny_dir) -> None:
    """A 4-bit model that already ran an eval no-grad forward (repacked, where the CPU has AVX512-BF16) gets its
    training layout back when adapters are attached, with a warning, and trains right across evaluations."""
    import bitsandbytes as bnb

    if not bnb.functional.has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16, so bitsandbytes never repacks 4-bit weights for inference")
    base = load_quantized(tiny_dir, "nf4")
    ids = token_batch()
    base.eval()
    with torch.no_grad():
        base(input_ids=ids)
    with pytest.warns(UserWarning, match="repacked by bitsandbytes"):
        model = peftkit.get_peft_model(base, METHODS["lora"]())
    assert not any(
        getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in quantized_linears(model).values()
    )
    before = adapter_gradients(model, ids)
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    after = adapter_gradients(model, ids)
    assert all(g.abs().sum() > 0 and torch.equal(after[n], g) for n, g in before.items())
