"""``get_base_model_state_dict`` / ``set_base_model_state_dict``: the base model's tensors under its own keys,
the same keys and values as the reference for layer methods, modules_to_save, several adapters, prompt methods
and mixed models; the setter restores perturbed base weights, leaves adapters alone, and reports (or, strict,
refuses before copying) missing and unexpected keys."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import peft
import pytest
import torch
from tests._tiny import build, build_model, randomise_adapter

import peftkit
from peftkit.io.base_state import base_key_map

CASES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "lora_mts": ("llama", "LoraConfig", {"r": 4, "target_modules": ["q_proj"], "modules_to_save": ["lm_head"]}),
    "lora_embedding_dora": ("llama", "LoraConfig", {"target_modules": ["embed_tokens", "o_proj"], "use_dora": True}),
    "ia3": ("llama", "IA3Config", {"target_modules": ["k_proj", "down_proj"], "feedforward_modules": ["down_proj"]}),
    "lora_gpt2": ("gpt2", "LoraConfig", {"r": 4, "target_modules": ["c_attn"], "fan_in_fan_out": True}),
    "lora_conv": ("convnet", "LoraConfig", {"r": 2, "target_modules": ["conv", "lin"]}),
    "vera": ("llama", "VeraConfig", {"r": 4, "target_modules": ["q_proj", "v_proj"]}),
    "lora_tokens": ("llama", "LoraConfig", {"target_modules": ["q_proj"], "trainable_token_indices": [0, 1, 3]}),
}  # fmt: skip


def _wrapped(lib: ModuleType, case: str) -> Any:
    kind, name, fields = CASES[case]
    model = lib.get_peft_model(build_model(kind), getattr(lib, name)(**fields))
    model.add_adapter("second", getattr(lib, name)(**fields))
    randomise_adapter(model)
    return model


@pytest.mark.parametrize("case", sorted(CASES))
def test_keys_and_values_match_reference(case: str) -> None:
    kind = CASES[case][0]
    original = build_model(kind).state_dict()
    ours = peftkit.get_base_model_state_dict(_wrapped(peftkit, case))
    theirs = peft.get_base_model_state_dict(_wrapped(peft, case))
    assert sorted(ours) == sorted(theirs) == sorted(original)
    for key, value in original.items():
        assert torch.equal(ours[key], value), key


@pytest.mark.parametrize("case", ["lora_mts", "lora_conv", "lora_tokens"])
def test_set_restores_base_and_keeps_adapters(case: str) -> None:
    model = _wrapped(peftkit, case)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    base_keys = set(peftkit.get_base_model_state_dict(model))
    clean = {k: v.clone() for k, v in peftkit.get_base_model_state_dict(model).items()}
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param))
    result = peftkit.set_base_model_state_dict(model, clean, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    restored = peftkit.get_base_model_state_dict(model)
    for key in base_keys:
        assert torch.equal(restored[key], clean[key]), key
    live_base = {"base_model.model." + k for k in base_key_map(model).values()}
    adapter_keys = {k for k in before if k not in live_base}
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert adapter_keys and changed == adapter_keys  # the setter never touches an adapter tensor


def test_strict_refuses_before_copying_and_lenient_reports() -> None:
    model = _wrapped(peftkit, "lora_mts")
    state = {k: torch.zeros_like(v) for k, v in peftkit.get_base_model_state_dict(model).items()}
    dropped = sorted(state)[0]
    del state[dropped]
    state["not.a.key"] = torch.zeros(3)
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="Missing key") as caught:
        peftkit.set_base_model_state_dict(model, state)
    assert isinstance(caught.value, peftkit.CheckpointError) and "not.a.key" in str(caught.value)
    assert all(torch.equal(v, snapshot[k]) for k, v in model.state_dict().items())
    result = peftkit.set_base_model_state_dict(model, state, strict=False)
    reference = peft.set_base_model_state_dict(_wrapped(peft, "lora_mts"), state, strict=False)
    assert result.missing_keys == sorted(reference.missing_keys) == [dropped]
    assert result.unexpected_keys == list(reference.unexpected_keys) == ["not.a.key"]
    loaded = peftkit.get_base_model_state_dict(model)
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if k in loaded)


def test_prompt_method_and_injected_model() -> None:
    prompt = peftkit.get_peft_model(
        build("llama"), peftkit.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    )
    reference = peft.get_peft_model(
        build("llama"), peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    )
    assert sorted(peftkit.get_base_model_state_dict(prompt)) == sorted(peft.get_base_model_state_dict(reference))
    injected = peftkit.inject_adapter_in_model(peftkit.LoraConfig(target_modules=["q_proj"]), build_model("llama"))
    assert sorted(peftkit.get_base_model_state_dict(injected)) == sorted(build_model("llama").state_dict())
