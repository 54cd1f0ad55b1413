"""Save / load round trip for every case: identical outputs and identical adapter state dicts."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from tests.contract._cases import output

import peftkit as peft


def test_save_load_gives_identical_outputs_and_state(case, tmp_path) -> None:
    model = case.peft()
    x = case.inputs()
    expected = output(model, x)
    assert not torch.allclose(expected, output(case.base(), x)), "the adapter must change the output"
    model.save_pretrained(tmp_path)

    loaded = peft.PeftModel.from_pretrained(case.base(), tmp_path)
    assert type(loaded) is type(model)
    torch.testing.assert_close(output(loaded, x), expected, rtol=0, atol=0)
    saved = peft.get_peft_model_state_dict(model)
    reloaded = peft.get_peft_model_state_dict(loaded)
    assert sorted(saved) == sorted(reloaded)
    for key, tensor in saved.items():
        assert torch.equal(tensor, reloaded[key]), key


def test_saved_config_loads_back_equal(case, tmp_path) -> None:
    model = case.peft()
    model.save_pretrained(tmp_path)
    on_disk = json.loads((tmp_path / "adapter_config.json").read_text())
    assert on_disk["inference_mode"] is True
    config = peft.PeftConfig.from_pretrained(tmp_path)
    original = model.peft_config["default"]
    for key in ("r", "lora_alpha", "use_rslora", "use_dora", "rank_pattern", "alpha_pattern", "modules_to_save"):
        assert getattr(config, key) == getattr(original, key), key
    assert set(config.target_modules) == set(original.target_modules)


def test_non_default_adapter_round_trip(case, tmp_path) -> None:
    model = case.peft(adapter="other")
    x = case.inputs()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "other" / "adapter_config.json").is_file()
    loaded = peft.PeftModel.from_pretrained(case.base(), tmp_path / "other", adapter_name="other")
    assert loaded.active_adapter == "other"
    torch.testing.assert_close(output(loaded, x), output(model, x), rtol=0, atol=0)


def test_failed_load_leaves_model_untouched(case, tmp_path, unchanged) -> None:
    model = case.peft()
    case.add(model, "spare", seed=2)
    model.save_pretrained(tmp_path, selected_adapters=["spare"])
    state = load_file(tmp_path / "spare" / "adapter_model.safetensors")
    state.pop(sorted(k for k in state if ".lora_" in k)[-1])
    save_file(state, tmp_path / "spare" / "adapter_model.safetensors")
    check = unchanged(model)
    with pytest.raises(peft.CheckpointError, match="missing keys"):
        model.load_adapter(tmp_path / "spare", adapter_name="broken")
    check()
