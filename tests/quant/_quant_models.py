"""Tiny quantized Llama models for the QLoRA tests: one float32 checkpoint written once, loaded through
transformers with each quantization config (bitsandbytes 4-bit / 8-bit and torchao, all on the CPU), and the
adapter configs crossed with them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tests._tiny import VOCAB, llama_config
from torch import nn
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaForCausalLM, TorchAoConfig

import peftkit

TARGETS = ["q_proj", "v_proj", "down_proj"]


def write_tiny_llama(directory: Path) -> Path:
    """A float32 Llama with 64-wide layers (bitsandbytes' CPU kernels want multiples of 32), seeded."""
    torch.manual_seed(0)
    LlamaForCausalLM(llama_config(hidden=64)).save_pretrained(directory)
    return directory


def _bnb4(quant_type: str, compute: torch.dtype, double: bool) -> Callable[[], Any]:
    return lambda: BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_compute_dtype=compute,
        bnb_4bit_use_double_quant=double,
    )


def _torchao_int8() -> TorchAoConfig:
    from torchao.quantization import Int8WeightOnlyConfig

    return TorchAoConfig(Int8WeightOnlyConfig())


def _torchao_intx4() -> TorchAoConfig:
    from torchao.quantization import IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup

    return TorchAoConfig(IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32)))


#: Quantization kind -> its transformers config (built lazily: the libraries import slowly).
KINDS: dict[str, Callable[[], Any]] = {
    "nf4": _bnb4("nf4", torch.float32, False),
    "nf4-bf16-dq": _bnb4("nf4", torch.bfloat16, True),
    "fp4-dq": _bnb4("fp4", torch.float32, True),
    "fp4-bf16": _bnb4("fp4", torch.bfloat16, False),
    "int8": lambda: BitsAndBytesConfig(load_in_8bit=True),
    "torchao-int8": _torchao_int8,
    "torchao-intx4": _torchao_intx4,
}
#: Kinds whose base computes in float32 (a dense twin with the dequantized weights gives the same gradients).
FLOAT32_KINDS = ("nf4", "fp4-dq", "int8", "torchao-int8")


def load_quantized(directory: Path, kind: str, **kwargs: Any) -> nn.Module:
    return AutoModelForCausalLM.from_pretrained(directory, quantization_config=KINDS[kind](), **kwargs)


#: Adapter method -> config (non-trivial initialisation, no dropout: the tests compare exact values).
METHODS: dict[str, Callable[[], peftkit.PeftConfig]] = {
    "lora": lambda: peftkit.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False),
    "dora-rslora": lambda: peftkit.LoraConfig(
        r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False, use_dora=True, use_rslora=True
    ),
    "ia3": lambda: peftkit.IA3Config(target_modules=TARGETS, feedforward_modules=["down_proj"], init_ia3_weights=False),
    "adalora": lambda: peftkit.AdaLoraConfig(
        init_r=4, target_r=2, total_step=10, target_modules=TARGETS, init_lora_weights=False
    ),
    "loha": lambda: peftkit.LoHaConfig(r=4, alpha=48, target_modules=TARGETS, init_weights=False),
    "lokr": lambda: peftkit.LoKrConfig(r=2, alpha=4, target_modules=TARGETS, init_weights=False, decompose_both=True),
}


def token_batch(seed: int = 1, batch: int = 2, length: int = 8) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def quantized_linears(model: nn.Module) -> dict[str, nn.Module]:
    """Every quantized linear layer of ``model`` by name (the base layers inside adapter layers included)."""
    from peftkit.quant.base import backend_for

    return {name: m for name, m in model.named_modules() if backend_for(m) is not None}


def packed_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """The stored tensors of a quantized layer's weight (codes and scales), for bit-exact comparisons."""
    weight = module.weight
    if hasattr(weight, "__tensor_flatten__"):  # torchao subclasses
        names, _ = weight.__tensor_flatten__()
        return {name: getattr(weight, name).clone() for name in names}
    stored = {"data": weight.data.clone()}
    state = getattr(weight, "quant_state", None)
    if state is not None:  # bitsandbytes 4-bit
        stored.update({k: v.clone() for k, v in state.as_dict(packed=True).items() if isinstance(v, torch.Tensor)})
    for name in ("SCB",):  # bitsandbytes 8-bit: the row scales live on the weight or on the matmul state
        scales = getattr(weight, name, None)
        scales = scales if scales is not None else getattr(getattr(module, "state", None), name, None)
        if scales is not None:
            stored[name] = scales.clone()
    return stored


def assert_same_packed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], where: str) -> None:
    assert before.keys() == after.keys(), where
    for key, tensor in before.items():
        assert torch.equal(after[key], tensor), f"{where}: {key}"


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Eval-mode logits under ``no_grad`` (the call that triggers bitsandbytes' CPU inference repack)."""
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits
