"""FSDP wrap decisions for adapter models (against the reference peft's ``fsdp_auto_wrap_policy``) and the QLoRA
storage dtype used as FSDP's mixed-precision dtype."""

from __future__ import annotations

import peft
import pytest
import torch
from peft.utils.other import fsdp_auto_wrap_policy as reference_policy
from tests.distributed._common import lora_config, tiny_llama

from peftkit.integrations.fsdp import quant_storage_dtype
from peftkit.utils.other import fsdp_auto_wrap_policy


def decisions(model: torch.nn.Module, policy) -> dict[str, bool]:
    return {name: bool(policy(module=m, recurse=False, nonwrapped_numel=0)) for name, m in model.named_modules()}


def test_wrap_policy_matches_the_reference() -> None:
    import peftkit

    kit = peftkit.get_peft_model(tiny_llama(), lora_config())
    settings = {k: getattr(lora_config(), k) for k in ("r", "lora_alpha", "target_modules", "lora_dropout")}
    ref = peft.get_peft_model(tiny_llama(), peft.LoraConfig(**settings))
    ours, theirs = decisions(kit, fsdp_auto_wrap_policy(kit)), decisions(ref, reference_policy(ref))
    assert ours == theirs
    wrapped = sorted(n for n, d in ours.items() if d)
    assert "base_model.model.model.layers.0" in wrapped  # the decoder block, with its frozen base
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default" in wrapped  # trainable leaves alone
    assert "base_model.model.model.layers.0.self_attn.q_proj.base_layer" not in wrapped


def test_qlora_storage_dtype_is_the_mixed_precision_dtype(tmp_path) -> None:
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig, LlamaForCausalLM

    tiny_llama().save_pretrained(tmp_path)
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_storage=torch.bfloat16)
    model = LlamaForCausalLM.from_pretrained(tmp_path, quantization_config=quantization, device_map="cpu")
    assert quant_storage_dtype(model) is torch.bfloat16
    assert quant_storage_dtype(tiny_llama()) is None
