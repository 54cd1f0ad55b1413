"""generate() with adapters (in place and through PeftModel), with adapters disabled, and after
merge_and_unload, on a tiny causal LM and a tiny seq2seq model. The oracle is the base model with
``W + (alpha / r) * B @ A`` written into each adapted weight by hand."""

from __future__ import annotations

import pytest
import torch
from tests._tiny import inputs_for, tiny_llama, tiny_t5
from tests.integration._transformers_fixtures import lora
from torch import nn

import peftkit

ALPHA, RANK = 32, 4


def merged_by_hand(base: nn.Module, adapter_state: dict[str, torch.Tensor]) -> nn.Module:
    """``base`` with every LoRA pair of ``adapter_state`` folded in: ``W += (alpha / r) B @ A``."""
    weights = dict(base.named_parameters())
    with torch.no_grad():
        for key, A in adapter_state.items():
            if key.endswith(".lora_A.weight"):
                module = key.removesuffix(".lora_A.weight")
                B = adapter_state[f"{module}.lora_B.weight"]
                weights[f"{module}.weight"].add_(B @ A, alpha=ALPHA / RANK)
    return base


def greedy(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    kwargs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    return model.generate(**kwargs, max_new_tokens=6, do_sample=False, pad_token_id=0)


@pytest.mark.parametrize("build", [tiny_llama, tiny_t5], ids=["causal", "seq2seq"])
def test_generate_with_disabled_and_merged_adapters(build) -> None:
    x = inputs_for(build())
    base_tokens = greedy(build(), x)
    model = peftkit.enable_adapter_methods(build())
    model.add_adapter(lora(r=RANK, alpha=ALPHA))
    expected = greedy(merged_by_hand(build(), model.get_adapter_state_dict()), x)
    assert not torch.equal(expected, base_tokens), "the adapter should change the generated tokens"

    assert torch.equal(greedy(model, x), expected)
    model.disable_adapters()
    assert torch.equal(greedy(model, x), base_tokens)
    model.enable_adapters()
    assert torch.equal(greedy(model, x), expected)

    task = peftkit.TaskType.CAUSAL_LM if build is tiny_llama else peftkit.TaskType.SEQ_2_SEQ_LM
    wrapped = peftkit.get_peft_model(build(), lora(r=RANK, alpha=ALPHA, task_type=task))
    wrapped.base_model.model.load_state_dict(model.state_dict())
    assert torch.equal(greedy(wrapped, x), expected)
    with wrapped.disable_adapter():
        assert torch.equal(greedy(wrapped, x), base_tokens)
    merged = wrapped.merge_and_unload()
    assert type(merged) is type(build()) and not any("lora" in name for name, _ in merged.named_modules())
    assert torch.equal(greedy(merged, x), expected)
