"""What ``load_adapter`` and ``set_peft_model_state_dict`` return: the same ``missing_keys`` /
``unexpected_keys`` as the reference, for every method, on a PeftModel and on a model with injected layers."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import peft
import pytest
from tests._tiny import build, build_model, randomise_adapter

import peftkit

LIBS: dict[str, ModuleType] = {"peft": peft, "peftkit": peftkit}
LAYER_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "lora": ("LoraConfig", {"r": 4, "target_modules": ["q_proj", "v_proj"], "modules_to_save": ["lm_head"]}),
    "ia3": ("IA3Config", {"target_modules": ["k_proj", "down_proj"], "feedforward_modules": ["down_proj"]}),
    "adalora": ("AdaLoraConfig", {"init_r": 4, "target_r": 2, "total_step": 10, "target_modules": ["q_proj"]}),
}
PROMPT_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "prompt_tuning": ("PromptTuningConfig", {"task_type": "CAUSAL_LM", "num_virtual_tokens": 3}),
    "prefix_tuning": ("PrefixTuningConfig", {"task_type": "CAUSAL_LM", "num_virtual_tokens": 3}),
    "p_tuning": ("PromptEncoderConfig", {"task_type": "CAUSAL_LM", "num_virtual_tokens": 3}),
}


def _config(lib: ModuleType, table: dict[str, tuple[str, dict[str, Any]]], case: str) -> Any:
    name, fields = table[case]
    return getattr(lib, name)(**fields)


def _results(lib: ModuleType, model: Any, saved: Path) -> tuple[Any, Any]:
    """``load_adapter`` of the saved adapter under a new name, and ``set_peft_model_state_dict`` of its state."""
    from_file = model.load_adapter(saved, adapter_name="other")
    state = lib.get_peft_model_state_dict(model, adapter_name="other")
    return from_file, lib.set_peft_model_state_dict(model, state, adapter_name="other")


def _as_lists(result: Any) -> tuple[list[str], list[str]]:
    return sorted(result.missing_keys), sorted(result.unexpected_keys)


@pytest.mark.parametrize("case", sorted(LAYER_CONFIGS))
def test_layer_method_results_match_reference(case: str, tmp_path: Path) -> None:
    source = peft.get_peft_model(build_model("llama"), _config(peft, LAYER_CONFIGS, case))
    randomise_adapter(source)
    source.save_pretrained(tmp_path)
    results = {}
    for name, lib in LIBS.items():
        model = lib.PeftModel.from_pretrained(build_model("llama"), tmp_path)
        if case == "adalora":  # one AdaLoRA adapter per model: reload it in place under its own name
            loaded = model.load_adapter(tmp_path, adapter_name="default")
            state = lib.get_peft_model_state_dict(model)
            results[name] = (loaded, lib.set_peft_model_state_dict(model, state))
        else:
            results[name] = _results(lib, model, tmp_path)
    for kit, ref in zip(results["peftkit"], results["peft"]):
        assert _as_lists(kit) == _as_lists(ref)
    assert results["peftkit"][1].missing_keys  # the base model's keys: a real count, not an empty default


@pytest.mark.parametrize("case", sorted(PROMPT_CONFIGS))
def test_prompt_method_results_match_reference(case: str, tmp_path: Path) -> None:
    """Two deliberate differences: the reference's generic key check does not know prompt keys, so it reports
    the file's ``prompt_embeddings`` as unexpected and the just-loaded encoder as missing although it loads them
    (peftkit reports neither); and its wrapper holds a ``word_embeddings`` alias that peftkit's does not."""
    source = peft.get_peft_model(build("llama"), _config(peft, PROMPT_CONFIGS, case))
    source.save_pretrained(tmp_path)
    results = {}
    for name, lib in LIBS.items():
        model = lib.PeftModel.from_pretrained(build("llama"), tmp_path)
        results[name] = _results(lib, model, tmp_path)
    (kit_file, kit_state), (ref_file, ref_state) = results["peftkit"], results["peft"]
    assert _as_lists(kit_file) == (ref_file.missing_keys, []) and ref_file.unexpected_keys == ["prompt_embeddings"]
    not_missing = {"word_embeddings.weight", "prompt_encoder.other.embedding.weight"}
    assert sorted(kit_state.missing_keys) == sorted(set(ref_state.missing_keys) - not_missing)
    assert "prompt_encoder.default.embedding.weight" in kit_state.missing_keys
    assert not kit_state.unexpected_keys


def test_injected_model_results_match_reference() -> None:
    results = {}
    for name, lib in LIBS.items():
        model = lib.inject_adapter_in_model(_config(lib, LAYER_CONFIGS, "lora"), build_model("llama"))
        state = lib.get_peft_model_state_dict(model)
        results[name] = _as_lists(lib.set_peft_model_state_dict(model, state))
    assert results["peftkit"] == results["peft"]
    assert any(".lora_A." not in key for key in results["peftkit"][0])
