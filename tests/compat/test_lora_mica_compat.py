"""MiCA (``init_lora_weights="mica"``) against the reference: the same factors from the same base (Linear,
GPT-2 Conv1D, Embedding, rank_pattern), ``B`` frozen through every adapter-state change while ``A`` trains,
the formula (``B`` spans the minor singular directions, ``A = 0``), training moves only ``A``, files, keys,
counts and outputs both ways; refusals (too large a rank, convolutions, DoRA) leave the model as it was."""

from __future__ import annotations

import copy
from typing import Any

import peft
import pytest
import torch
from tests._tiny import build_model, model_inputs, model_output
from tests.compat._cross import Adapter, compat_tests

import peftkit
from peftkit.errors import ConfigError, UnsupportedError

LLAMA: dict[str, Any] = {"r": 4, "target_modules": ["q_proj", "down_proj", "embed_tokens"], "init_lora_weights": "mica"}
CROSS = [
    Adapter("llama", "LoraConfig", LLAMA),
    Adapter("gpt2_conv1d", "LoraConfig", {**LLAMA, "target_modules": ["c_attn", "c_fc"]}, model="gpt2"),
    Adapter("rank_pattern", "LoraConfig", {**LLAMA, "rank_pattern": {"down_proj": 2}}, name="other"),
]
test_cross_load, test_same_files_and_counts = compat_tests(CROSS, CROSS)


def _lora_tensors(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: param for name, param in model.named_parameters() if ".lora_" in name}


@pytest.mark.parametrize("case", CROSS, ids=lambda a: a.id)
def test_same_factors_and_trainability_as_the_reference(case: Adapter) -> None:
    base = build_model(case.model)
    ref = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**case.fields))
    kit = peftkit.get_peft_model(copy.deepcopy(base), peftkit.LoraConfig(**case.fields))
    ref_tensors, kit_tensors = _lora_tensors(ref), _lora_tensors(kit)
    assert ref_tensors.keys() == kit_tensors.keys()
    for name, tensor in ref_tensors.items():
        torch.testing.assert_close(kit_tensors[name], tensor, rtol=0, atol=0, msg=name)
        assert kit_tensors[name].requires_grad == tensor.requires_grad == ("_B" not in name), name


def test_factors_are_the_minor_singular_directions() -> None:
    model = peftkit.get_peft_model(build_model("llama"), peftkit.LoraConfig(**LLAMA))
    layer = model.base_model.model.model.layers[0].mlp.down_proj
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    u, _, _ = torch.linalg.svd(layer.base_layer.weight.detach(), full_matrices=False)
    minor = u[:, -4:]
    assert torch.equal(A, torch.zeros_like(A))
    torch.testing.assert_close(B @ B.T, minor @ minor.T, atol=1e-5, rtol=0)  # same subspace, whatever the signs
    inputs = model_inputs("llama")
    torch.testing.assert_close(model_output(model, inputs), model_output(build_model("llama"), inputs))


def test_b_stays_frozen_through_adapter_state_changes_and_training() -> None:
    model = peftkit.get_peft_model(build_model("llama"), peftkit.LoraConfig(**LLAMA))
    model.add_adapter("plain", peftkit.LoraConfig(r=2, target_modules=["q_proj"]))
    for step in (lambda: model.set_adapter("plain"), lambda: model.set_adapter("default"), model.disable_adapter):
        context = step()
        if context is not None:
            with context:
                pass
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".default" in n and "_B" not in n for n in trainable)
    before = {n: p.detach().clone() for n, p in _lora_tensors(model).items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    model(**model_inputs("llama"), labels=model_inputs("llama")["input_ids"]).loss.backward()
    optimizer.step()
    for name, old in before.items():
        changed = not torch.equal(old, _lora_tensors(model)[name])
        assert changed == (".default" in name and "_A" in name), name


@pytest.mark.parametrize(
    ("fields", "error", "match"),
    [
        ({"r": 20, "target_modules": ["q_proj"]}, ConfigError, "smallest singular"),
        ({"r": 2, "target_modules": ["q_proj"], "use_dora": True}, ConfigError, "mica"),
    ],
)
def test_refusals_leave_the_model_unchanged(fields: dict[str, Any], error: type, match: str, unchanged: Any) -> None:
    model = build_model("llama")
    check = unchanged(model)
    with pytest.raises(error, match=match):
        peftkit.get_peft_model(model, peftkit.LoraConfig(**{"init_lora_weights": "mica", **fields}))
    check()


def test_convolution_is_refused() -> None:
    config = peftkit.LoraConfig(r=2, target_modules=["conv"], init_lora_weights="mica")
    with pytest.raises(UnsupportedError, match="Linear"):
        peftkit.get_peft_model(build_model("convnet"), config)
