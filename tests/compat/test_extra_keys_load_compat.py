"""Checkpoint keys outside the adapter's own tensors, loaded as the reference peft 0.21.2 loads them: base-model
tensors (the biases of a ``bias="all"`` / ``"lora_only"`` checkpoint loaded with a config that does not train
them) go into the base model, with a warning; keys that fit nothing are ignored, with a warning, and reported in
``unexpected_keys``; a base tensor of another shape is refused before anything changes."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import peft
import pytest
import torch
from tests._tiny import build_model, model_inputs, model_output, randomise_adapter

import peftkit

TARGETS = {"llama": ["q_proj", "down_proj"], "convnet": ["conv", "lin"]}


def _trained_state(lib: ModuleType, kind: str, bias: str) -> dict[str, torch.Tensor]:
    """An adapter state dict (file keys) whose saved base biases differ from the base model's."""
    model = lib.get_peft_model(build_model(kind), lib.LoraConfig(r=2, target_modules=TARGETS[kind], bias=bias))
    randomise_adapter(model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.add_(0.5)
    return {k: v.clone() for k, v in lib.get_peft_model_state_dict(model).items()}


def _load(lib: ModuleType, kind: str, state: dict[str, torch.Tensor]) -> tuple[Any, Any]:
    model = lib.get_peft_model(build_model(kind), lib.LoraConfig(r=2, target_modules=TARGETS[kind]))
    return model, lib.set_peft_model_state_dict(model, state)


@pytest.mark.parametrize("kind", sorted(TARGETS))
@pytest.mark.parametrize("bias", ["all", "lora_only"])
def test_base_biases_of_the_checkpoint_load_as_in_reference(kind: str, bias: str) -> None:
    state = _trained_state(peft, kind, bias)
    assert any(k.endswith("bias") for k in state)  # the checkpoint does hold base biases
    reference, ref_result = _load(peft, kind, state)
    with pytest.warns(UserWarning, match="base-model tensors"):
        ours, result = _load(peftkit, kind, state)
    inputs = model_inputs(kind)
    torch.testing.assert_close(model_output(ours, inputs), model_output(reference, inputs))
    assert sorted(result.missing_keys) == sorted(ref_result.missing_keys)
    assert list(result.unexpected_keys) == list(ref_result.unexpected_keys) == []
    without_biases = _load(peftkit, kind, {k: v for k, v in state.items() if ".lora_" in k})[0]
    assert not torch.allclose(model_output(ours, inputs), model_output(without_biases, inputs))


def test_file_with_base_biases_loads_with_another_bias_setting(tmp_path: Path) -> None:
    source = peftkit.get_peft_model(
        build_model("llama"), peftkit.LoraConfig(r=2, target_modules=["q_proj"], bias="all")
    )
    randomise_adapter(source)
    source.save_pretrained(tmp_path)
    config = peftkit.LoraConfig(r=2, target_modules=["q_proj"])  # what PEFT's FSDP test loads with
    with pytest.warns(UserWarning, match="base-model tensors"):
        loaded = peftkit.PeftModel.from_pretrained(build_model("llama"), tmp_path, config=config)
    inputs = model_inputs("llama")
    torch.testing.assert_close(model_output(loaded, inputs), model_output(source, inputs))


def test_keys_that_fit_nothing_are_ignored_and_reported_as_in_reference() -> None:
    state = _trained_state(peft, "llama", "none")
    state["base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight"] = torch.ones(2, 16)
    reference, ref_result = _load(peft, "llama", state)
    with pytest.warns(UserWarning, match=r"Ignored checkpoint keys .*layers\.9\.self_attn"):
        ours, result = _load(peftkit, "llama", state)
    assert list(result.unexpected_keys) == list(ref_result.unexpected_keys)
    assert result.unexpected_keys == ["base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight"]
    inputs = model_inputs("llama")
    torch.testing.assert_close(model_output(ours, inputs), model_output(reference, inputs))


def test_base_tensor_of_another_shape_is_refused_untouched() -> None:
    state = _trained_state(peftkit, "llama", "all")
    key = next(k for k in state if k.endswith("o_proj.bias"))
    state[key] = torch.zeros(3)
    model = peftkit.get_peft_model(build_model("llama"), peftkit.LoraConfig(r=2, target_modules=TARGETS["llama"]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(peftkit.CheckpointError, match=r"o_proj\.bias: checkpoint \(3,\) vs model \(16,\)"):
        peftkit.set_peft_model_state_dict(model, state)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
