"""KaSA (``LoraConfig(kasa_config=KasaConfig())``) against the reference: the same truncated base weights from the
same base, files, keys, counts and outputs both ways (unmerged and merged, also through a ``low_cpu_mem_usage``
load), the same auxiliary loss on the same tensors, and the reference's refusals as ``ValueError``s that leave the
model as it was."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from tests._tiny import build_model, model_inputs, model_output, randomise_adapter
from tests.compat._cross import Adapter, compat_tests

import peftkit
from peftkit.errors import ConfigError

LLAMA: dict[str, Any] = {"r": 4, "target_modules": ["q_proj", "k_proj", "down_proj"], "kasa_config": {"beta": 0.2}}
CROSS = [
    Adapter("llama", "LoraConfig", LLAMA),
    Adapter("rank_pattern", "LoraConfig", {**LLAMA, "rank_pattern": {"down_proj": 2}, "lora_alpha": 4}, name="other"),
]
test_cross_load, test_same_files_and_counts = compat_tests(CROSS, CROSS)


def _build(lib: Any, fields: dict[str, Any], base: torch.nn.Module | None = None) -> Any:
    if "kasa_config" in fields:
        fields = {**fields, "kasa_config": lib.KasaConfig(**fields["kasa_config"])}
    config = lib.LoraConfig(**fields)
    return lib.get_peft_model(base if base is not None else build_model("llama"), config)


def _base_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if "lora_" not in n}


def test_same_truncated_base_weights_as_the_reference() -> None:
    ref, kit = _build(peft, LLAMA), _build(peftkit, LLAMA)
    ref_weights, kit_weights = _base_weights(ref), _base_weights(kit)
    assert ref_weights.keys() == kit_weights.keys()
    original = dict(build_model("llama").named_parameters())
    changed = 0
    for name, weight in ref_weights.items():
        torch.testing.assert_close(kit_weights[name], weight, rtol=0, atol=1e-6, msg=name)
        changed += not torch.equal(weight, original[name.replace("base_model.model.", "").replace("base_layer.", "")])
    assert changed == 2 * 3  # q_proj, k_proj and down_proj of both layers were truncated


def test_low_cpu_mem_usage_load_matches(tmp_path: Path) -> None:
    saved = _build(peft, LLAMA)
    randomise_adapter(saved)
    saved.save_pretrained(tmp_path)
    inputs = model_inputs("llama")
    expected = model_output(saved.eval(), inputs)
    loaded = peftkit.PeftModel.from_pretrained(build_model("llama"), tmp_path, low_cpu_mem_usage=True)
    torch.testing.assert_close(model_output(loaded, inputs), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(model_output(loaded, inputs), expected, atol=1e-5, rtol=0)  # truncated once only


@pytest.mark.parametrize("adapter_names", [None, "default", ["default"]])
def test_same_auxiliary_loss_as_the_reference(tmp_path: Path, adapter_names: Any) -> None:
    saved = _build(peft, LLAMA)
    randomise_adapter(saved)
    saved.save_pretrained(tmp_path)
    loaded = peftkit.PeftModel.from_pretrained(build_model("llama"), tmp_path, is_trainable=True)
    expected = saved._get_kasa_loss(adapter_names)
    loss = loaded._get_kasa_loss(adapter_names)
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-6)
    loss.backward()
    assert all(p.grad is not None for n, p in loaded.named_parameters() if "lora_diag" in n)
    assert loaded._get_kasa_loss("missing") == saved._get_kasa_loss("missing") == 0.0


@pytest.mark.parametrize(
    ("model", "fields"),
    [
        ("gpt2", {"r": 4, "target_modules": ["c_attn"]}),  # Conv1D stores (in, out)
        ("llama", {"r": 4, "target_modules": ["q_proj", "embed_tokens"]}),
        ("llama", {"r": 8, "target_modules": ["q_proj", "k_proj"]}),  # k_proj is (8, 16): r must stay below 8
    ],
    ids=["conv1d", "embedding", "rank_too_large"],
)
def test_refusals_like_the_reference_leave_the_model_unchanged(model: str, fields: dict[str, Any]) -> None:
    fields = {**fields, "kasa_config": {}}
    with pytest.raises(ValueError):
        _build(peft, fields, build_model(model))
    base = build_model(model)
    before = copy.deepcopy(base.state_dict())
    with pytest.raises(ConfigError):
        _build(peftkit, fields, base)
    after = base.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize("kasa_first", [True, False])
def test_kasa_and_plain_adapters_do_not_mix(kasa_first: bool) -> None:
    plain = {"r": 4, "target_modules": ["q_proj"]}
    first, second = (LLAMA, plain) if kasa_first else (plain, LLAMA)
    for lib in (peft, peftkit):
        model = _build(lib, first)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        with pytest.raises(ValueError, match="KaSA"):
            model.add_adapter("second", _build(lib, second).peft_config["default"])
        assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
