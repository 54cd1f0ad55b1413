"""LoftQ against its formula on fresh random weights: each round quantizes the residual with bitsandbytes (NF4 in
blocks of 64, or int8 per row) and takes the rank-r SVD of what quantization missed; the base becomes the
quantized weight and ``Q + B A`` is closer to ``W`` than ``Q`` alone; an adapter saves and reloads on the original
base (the quantization is redone at load, as in PEFT); ``replace_lora_weights_loftq`` on a bitsandbytes 4-bit base
reads the original weights from safetensors, and a rejecting callback puts the old factors back; refusals."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tests._tiny import build_model, model_output

import peftkit
from peftkit import LoftQConfig, LoraConfig
from peftkit.errors import ArgumentTypeError, ConfigError, UsageError
from peftkit.methods.lora.loftq import loftq_init, low_rank_decomposition, quantization_roundtrip

bnb = pytest.importorskip("bitsandbytes")


def _rank_r(matrix: torch.Tensor, r: int) -> torch.Tensor:
    U, S, Vh = torch.linalg.svd(matrix, full_matrices=False)
    return U[:, :r] @ torch.diag(S[:r]) @ Vh[:r]


def test_roundtrips_are_bitsandbytes_quantizations() -> None:
    w = torch.randn(16, 128)
    data, state = bnb.functional.quantize_4bit(w, blocksize=64, compress_statistics=False, quant_type="nf4")
    assert torch.equal(quantization_roundtrip(w, 4), bnb.functional.dequantize_4bit(data, state))
    scales = w.abs().amax(dim=1, keepdim=True) / 127  # int8: per-row absmax
    torch.testing.assert_close(quantization_roundtrip(w, 8), torch.round(w / scales) * scales, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("bits", "iters"), [(4, 1), (4, 3), (8, 2)])
def test_alternating_rounds_follow_the_formula(bits: int, iters: int) -> None:
    w = torch.randn(24, 64)
    q, A, B = loftq_init(w, bits, 4, iters)
    residual = w.clone()
    for _ in range(iters):
        expected_q = quantization_roundtrip(residual, bits)
        expected_lr = _rank_r(w - expected_q, 4)
        L, R = low_rank_decomposition(w - expected_q, 4)  # the same product, rounded as the library rounds it
        residual = w - L @ R
    assert torch.equal(q, expected_q)
    torch.testing.assert_close(B @ A, expected_lr, atol=1e-5, rtol=1e-4)
    assert A.shape == (4, 64) and B.shape == (24, 4)
    assert (w - q - B @ A).norm() < (w - quantization_roundtrip(w, bits)).norm()


def test_layers_get_the_quantized_base_and_reload_on_the_original(tmp_path: Path) -> None:
    base = build_model("llama")
    config = LoraConfig(
        r=4, lora_alpha=4, target_modules=["q_proj", "down_proj"], init_lora_weights="loftq",
        loftq_config=LoftQConfig(loftq_bits=4, loftq_iter=2),
    )  # fmt: skip
    model = peftkit.get_peft_model(copy.deepcopy(base), config)
    layer = model.base_model.model.model.layers[1].mlp.down_proj
    q, A, B = loftq_init(base.model.layers[1].mlp.down_proj.weight, 4, 4, 2)
    assert torch.equal(layer.base_layer.weight, q)
    assert torch.equal(layer.lora_A["default"].weight, A) and torch.equal(layer.lora_B["default"].weight, B)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.add_(0.05 * torch.randn_like(param))
    ids = {"input_ids": torch.randint(0, 64, (2, 7))}
    model.save_pretrained(tmp_path)
    loaded = peftkit.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    torch.testing.assert_close(model_output(loaded, ids), model_output(model, ids), rtol=0, atol=0)


def _quantize_in_place(model: torch.nn.Module, names: list[str]) -> None:
    for name in names:
        parent, _, child = name.rpartition(".")
        linear = model.get_submodule(name)
        quantized = bnb.nn.Linear4bit(
            linear.in_features, linear.out_features, bias=False, compute_dtype=torch.float32, quant_type="nf4"
        )
        quantized.weight = bnb.nn.Params4bit(linear.weight.detach().clone(), requires_grad=False, quant_type="nf4")
        setattr(model.get_submodule(parent), child, quantized.to("cpu"))


def test_replace_lora_weights_loftq_on_a_4bit_base(tmp_path: Path) -> None:
    base = build_model("llama")
    names = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"]
    originals = {f"{n}.weight": base.get_submodule(n).weight.detach().clone().contiguous() for n in names}
    save_file(originals, str(tmp_path / "model.safetensors"))
    _quantize_in_place(base, names)
    model = peftkit.get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "down_proj"]))
    layer = model.base_model.model.model.layers[1].mlp.down_proj
    kept = layer.lora_A["default"].weight.detach().clone()
    seen: list[str] = []
    peftkit.replace_lora_weights_loftq(model, str(tmp_path), callback=lambda m, n: bool(seen.append(n)) or "q" in n)
    assert seen == names
    assert torch.equal(layer.lora_A["default"].weight, kept)  # rejected by the callback: put back
    q_layer = model.base_model.model.model.layers[0].self_attn.q_proj
    weight = q_layer.base_layer.weight
    dequantized = bnb.functional.dequantize_4bit(weight.data, weight.quant_state)
    product = q_layer.lora_B["default"].weight @ q_layer.lora_A["default"].weight
    torch.testing.assert_close(product, _rank_r(originals[f"{names[0]}.weight"] - dequantized, 2), atol=1e-5, rtol=0)
    with pytest.raises(UsageError, match="no LoRA layer on a bitsandbytes 4-bit"):
        peftkit.replace_lora_weights_loftq(peftkit.get_peft_model(build_model("llama"), LoraConfig()), str(tmp_path))


def test_refusals() -> None:
    with pytest.raises(ConfigError, match="loftq_config"):
        LoraConfig(init_lora_weights="loftq")
    with pytest.warns(UserWarning, match="loftq_config is only read"):
        assert LoraConfig(loftq_config=LoftQConfig()).loftq_config == {}
    with pytest.raises(ConfigError, match="lora_bias"):
        LoraConfig(init_lora_weights="loftq", loftq_config=LoftQConfig(), lora_bias=True)
    with pytest.raises(ConfigError, match="AdaLoRA"):
        peftkit.AdaLoraConfig(init_lora_weights="loftq", loftq_config={"loftq_bits": 4}, total_step=1)
    with pytest.raises(ConfigError, match="4 bits"):
        loftq_init(torch.randn(8, 64), 2, 2)
    quantized = build_model("llama")
    _quantize_in_place(quantized, ["model.layers.0.self_attn.q_proj"])
    config = LoraConfig(target_modules=["q_proj"], init_lora_weights="loftq", loftq_config=LoftQConfig())
    with pytest.raises(ArgumentTypeError, match="replace_lora_weights_loftq"):
        peftkit.get_peft_model(quantized, config)
