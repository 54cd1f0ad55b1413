"""A PiSSA / OLoRA adapter saved as it is (not converted to a plain LoRA) and loaded on the original base model:
the reference re-runs the initialisation at load (the base becomes its residual) before copying the saved factors;
peftkit does the same, so outputs and base weights equal the reference's, in both directions of save and load."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import peft
import pytest
import torch
from tests._tiny import build_model, model_inputs, randomise_adapter

import peftkit

LIBS: dict[str, ModuleType] = {"peft": peft, "peftkit": peftkit}


def _output(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(**model_inputs("llama")).logits


def _base_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "base_layer.weight" in k}


@pytest.mark.parametrize("saver", sorted(LIBS))
@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_saved_decomposing_adapter_loads_on_original_base_as_reference(init: str, saver: str, tmp_path: Path) -> None:
    lib = LIBS[saver]
    config = lib.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=init)
    trained = lib.get_peft_model(build_model("llama"), config)
    randomise_adapter(trained)  # stands for training: the factors moved away from their initial values
    trained.save_pretrained(tmp_path)
    loaded = {name: other.PeftModel.from_pretrained(build_model("llama"), tmp_path) for name, other in LIBS.items()}
    torch.testing.assert_close(_output(loaded["peftkit"]), _output(loaded["peft"]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(_output(loaded["peftkit"]), _output(trained), atol=1e-5, rtol=1e-5)
    kit, ref = _base_weights(loaded["peftkit"]), _base_weights(loaded["peft"])
    assert kit.keys() == ref.keys() and kit
    for key in kit:
        torch.testing.assert_close(kit[key], ref[key], atol=1e-5, rtol=1e-5)


def test_plain_lora_load_leaves_the_base_alone(tmp_path: Path) -> None:
    trained = peftkit.get_peft_model(build_model("llama"), peftkit.LoraConfig(r=4, target_modules=["q_proj"]))
    randomise_adapter(trained)
    trained.save_pretrained(tmp_path)
    base = build_model("llama")
    before = base.model.layers[0].self_attn.q_proj.weight.detach().clone()
    loaded = peftkit.PeftModel.from_pretrained(base, tmp_path)
    assert torch.equal(loaded.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight, before)
