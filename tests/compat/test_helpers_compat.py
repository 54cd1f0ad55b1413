"""PEFT's ``peft.helpers`` as ``peftkit.helpers``: ``check_if_peft_model`` gives the reference's answer for an
adapter directory, a plain directory, a broken config and a missing path; ``rescale_adapter_scale`` scales every
LoRA update by the factor (outputs equal to the reference's under the same factor, and to a formula), restores
the exact outputs afterwards even when the block raises, and refuses what the reference refuses."""

from __future__ import annotations

from pathlib import Path

import peft
import peft.helpers
import pytest
import torch
from tests._tiny import build_model, model_inputs, model_output, randomise_adapter

import peftkit
import peftkit.helpers


def test_check_if_peft_model_as_in_reference(tmp_path: Path) -> None:
    peftkit.get_peft_model(build_model("llama"), peftkit.LoraConfig(target_modules=["q_proj"])).save_pretrained(
        tmp_path / "adapter"
    )
    (tmp_path / "plain").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "adapter_config.json").write_text("{not json")
    for name, expected in (("adapter", True), ("plain", False), ("broken", False), ("missing", False)):
        path = str(tmp_path / name)
        assert peftkit.helpers.check_if_peft_model(path) is peft.helpers.check_if_peft_model(path) is expected


def test_rescale_matches_reference_and_formula(tmp_path: Path) -> None:
    config = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "use_rslora": True}
    source = peftkit.get_peft_model(build_model("llama"), peftkit.LoraConfig(**config))
    randomise_adapter(source)
    source.save_pretrained(tmp_path)
    ours = peftkit.PeftModel.from_pretrained(build_model("llama"), tmp_path)
    theirs = peft.PeftModel.from_pretrained(build_model("llama"), tmp_path)
    inputs = model_inputs("llama")
    base, normal = model_output(build_model("llama"), inputs), model_output(ours, inputs)
    with peftkit.helpers.rescale_adapter_scale(ours, 0.0):
        torch.testing.assert_close(model_output(ours, inputs), base)  # no update at all
    for factor in (0.5, 2):
        with peftkit.helpers.rescale_adapter_scale(ours, factor), peft.helpers.rescale_adapter_scale(theirs, factor):
            torch.testing.assert_close(model_output(ours, inputs), model_output(theirs, inputs))
            assert not torch.allclose(model_output(ours, inputs), normal)
    torch.testing.assert_close(model_output(ours, inputs), normal)


def test_rescale_restores_after_an_error_and_refuses_bad_input() -> None:
    model = peftkit.get_peft_model(build_model("llama"), peftkit.LoraConfig(target_modules=["q_proj"]))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    before = dict(layer.scaling)
    with pytest.raises(KeyError), peftkit.helpers.rescale_adapter_scale(model, 3):
        raise KeyError("inside the block")
    assert layer.scaling == before
    for lib, make in ((peft, peft.helpers), (peftkit, peftkit.helpers)):
        with pytest.raises(TypeError), make.rescale_adapter_scale(model, "2"):
            pass
        ia3 = lib.get_peft_model(build_model("llama"), lib.IA3Config(target_modules=["k_proj"], feedforward_modules=[]))
        with pytest.raises(ValueError), make.rescale_adapter_scale(ia3, 2.0):
            pass
