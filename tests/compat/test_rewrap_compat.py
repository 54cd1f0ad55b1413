"""Wrapping a base model a second time (``get_peft_model`` / ``PeftModel.from_pretrained`` on a model that already
holds an adapter named ``default``): like the reference, peftkit warns and continues, and the new adapter takes
the name's place, with outputs equal to the reference's."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import peft
import pytest
import torch
from tests._tiny import build_model, model_inputs, randomise_adapter

import peftkit

LIBS: dict[str, ModuleType] = {"peft": peft, "peftkit": peftkit}
TARGETS = ["q_proj", "v_proj"]


def _output(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(**model_inputs("llama")).logits


@pytest.mark.parametrize("method", ["LoraConfig", "IA3Config"])
def test_get_peft_model_twice_warns_and_reinitialises(method: str) -> None:
    outputs = {}
    for name, lib in LIBS.items():
        base = build_model("llama")
        config = getattr(lib, method)(target_modules=TARGETS)
        randomise_adapter(lib.get_peft_model(base, config))
        with pytest.warns(UserWarning, match="You are trying to modify a model .*"):
            again = lib.get_peft_model(base, config)
        outputs[name] = _output(again)
        assert list(again.peft_config) == ["default"]
    torch.testing.assert_close(outputs["peftkit"], outputs["peft"])
    torch.testing.assert_close(outputs["peftkit"], _output(build_model("llama")))  # a fresh LoRA / IA3 is the identity


def test_unload_then_get_peft_model_does_not_warn(recwarn: pytest.WarningsRecorder) -> None:
    base = build_model("llama")
    peftkit.get_peft_model(base, peftkit.LoraConfig(target_modules=TARGETS)).unload()
    peftkit.get_peft_model(base, peftkit.LoraConfig(target_modules=TARGETS))
    assert not [w for w in recwarn if "modify a model" in str(w.message)]


def test_from_pretrained_on_wrapped_base_loads_the_saved_adapter(tmp_path: Path) -> None:
    saved = peft.get_peft_model(build_model("llama"), peft.LoraConfig(target_modules=TARGETS))
    randomise_adapter(saved, seed=7)
    saved.save_pretrained(tmp_path)
    outputs = {}
    for name, lib in LIBS.items():
        base = build_model("llama")
        randomise_adapter(lib.get_peft_model(base, lib.LoraConfig(target_modules=TARGETS)), seed=3)
        loaded = lib.PeftModel.from_pretrained(base, tmp_path)
        outputs[name] = _output(loaded)
    torch.testing.assert_close(outputs["peftkit"], outputs["peft"])
    torch.testing.assert_close(outputs["peftkit"], _output(saved))
