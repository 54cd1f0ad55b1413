"""Which parameters train: only the active adapter's (+ its modules_to_save copies, + biases per ``bias``),
through get_peft_model, from_pretrained, add_adapter, load_adapter, set_adapter, and real optimizer steps."""

from __future__ import annotations

import pytest
import torch
from tests._tiny import build_model

import peftkit as peft


def trainable(model) -> set[str]:
    return {name for name, param in model.named_parameters() if param.requires_grad}


def adapter_param_names(model, adapter: str) -> set[str]:
    """Names of ``adapter``'s own tensors: LoRA factors, DoRA magnitudes and modules_to_save copies."""
    return {
        name
        for name, _ in model.named_parameters()
        if f".{adapter}." in name + "." and (".lora_" in name or ".modules_to_save." in name)
    }


def test_only_adapter_parameters_train(case) -> None:
    model = case.peft()
    expected = adapter_param_names(model, "default")
    assert expected and any(".lora_A." in n for n in expected)
    assert trainable(model) == expected
    if case.config_kwargs.get("use_dora"):
        assert any("lora_magnitude_vector" in n for n in expected)
    if case.config_kwargs.get("task_type") == "SEQ_CLS":
        assert any(".classifier.modules_to_save.default." in n for n in expected)


@pytest.mark.parametrize("bias", ["none", "all", "lora_only"])
def test_bias_modes_match_reference_peft(bias: str) -> None:
    reference = pytest.importorskip("peft")
    kwargs = {"target_modules": ["c_attn"], "r": 2, "bias": bias, "fan_in_fan_out": True}
    ours = peft.get_peft_model(build_model("gpt2"), peft.LoraConfig(**kwargs))
    theirs = reference.get_peft_model(build_model("gpt2"), reference.LoraConfig(**kwargs))
    assert trainable(ours) == trainable(theirs)
    if bias == "lora_only":
        assert "base_model.model.transformer.h.0.attn.c_attn.base_layer.bias" in trainable(ours)


@pytest.mark.parametrize("is_trainable", [False, True])
def test_from_pretrained_trainability(case, tmp_path, is_trainable: bool) -> None:
    case.peft().save_pretrained(tmp_path)
    loaded = peft.PeftModel.from_pretrained(case.base().train(), tmp_path, is_trainable=is_trainable)
    if is_trainable:
        assert trainable(loaded) == adapter_param_names(loaded, "default")
    else:
        assert trainable(loaded) == set()
        assert not any(module.training for module in loaded.modules()), "is_trainable=False must give eval mode"


def test_add_and_load_adapter_keep_active_trainability(case, tmp_path) -> None:
    model = case.peft()
    case.add(model, "spare", seed=5)
    model.save_pretrained(tmp_path, selected_adapters=["spare"])
    model.delete_adapter("spare")
    expected = trainable(model)
    case.add(model, "added", seed=2)
    assert trainable(model) == expected
    model.load_adapter(tmp_path / "spare", adapter_name="loaded", is_trainable=False)
    assert trainable(model) == expected
    model.load_adapter(tmp_path / "spare", adapter_name="loaded_trainable", is_trainable=True)
    assert trainable(model) == expected | adapter_param_names(model, "loaded_trainable"), "is_trainable=True trains it"
    assert model.active_adapter == "default"


def test_set_adapter_moves_trainability(case) -> None:
    model = case.peft()
    case.add(model, "other", seed=2)
    model.set_adapter("other")
    assert trainable(model) == adapter_param_names(model, "other")
    model.set_adapter("default")
    assert trainable(model) == adapter_param_names(model, "default")


def test_optimizer_steps_change_only_adapter_parameters(llama_case) -> None:
    model = llama_case.peft(init_lora_weights=True).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    batch = llama_case.inputs(4)
    losses = []
    for _ in range(8):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    after = model.state_dict()
    assert after.keys() == before.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    adapter_keys = {k for k in before if ".lora_" in k}
    assert changed == adapter_keys, "exactly the adapter tensors (A and B of every target) must change"
