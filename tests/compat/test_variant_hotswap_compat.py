"""Hot-swapping an adapter of a LoRA variant into a slot of the same variant and rank (MonteCLoRA, KaSA), against the
reference's ``peft.utils.hotswap.hotswap_adapter``: the swapped model holds the new adapter's tensors and gives the
outputs of the new adapter loaded afresh (the reference's outputs for MonteCLoRA; the reference fails on KaSA's
``lora_diag``, so there the oracle is a fresh load, whose truncation of the base depends only on the base and ``r``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from peft.utils.hotswap import hotswap_adapter as peft_hotswap_adapter
from tests._tiny import build_model, model_inputs, randomise_adapter

import peftkit
from peftkit.errors import HotswapError
from peftkit.utils.hotswap import hotswap_adapter, prepare_model_for_compiled_hotswap

TARGETS = ["q_proj", "v_proj", "down_proj"]


def _config(lib: Any, variant: str, **extra: Any) -> Any:
    sub = {"monteclora_config": lib.MontecloraConfig(num_samples=4, **extra)} if variant == "mc" else {}
    if variant == "kasa":
        sub = {"kasa_config": lib.KasaConfig()}
    return lib.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, **sub)


def _save(variant: str, path: Path, seed: int, **extra: Any) -> Path:
    model = peft.get_peft_model(build_model("llama"), _config(peft, variant, **extra))
    randomise_adapter(model, seed=seed)
    model.save_pretrained(path)
    return path


def _output(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(**model_inputs("llama")).logits


def _adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if "lora_" in k}


@pytest.mark.parametrize("variant", ["mc", "kasa"])
@pytest.mark.parametrize("prepared", [False, True])
def test_same_variant_hotswap_gives_the_new_adapter(variant: str, prepared: bool, tmp_path: Path) -> None:
    first, second = _save(variant, tmp_path / "first", seed=2), _save(variant, tmp_path / "second", seed=3)
    model = peftkit.PeftModel.from_pretrained(build_model("llama"), first).eval()
    if prepared:
        prepare_model_for_compiled_hotswap(model)
    hotswap_adapter(model, str(second), adapter_name="default")
    fresh = peftkit.PeftModel.from_pretrained(build_model("llama"), second).eval()
    torch.testing.assert_close(_output(model), _output(fresh), atol=1e-5, rtol=0)
    swapped, expected = _adapter_state(model), _adapter_state(fresh)
    assert swapped.keys() == expected.keys()
    for key, tensor in expected.items():
        torch.testing.assert_close(swapped[key], tensor, atol=0, rtol=0, msg=key)
    if variant == "mc":
        reference = peft.PeftModel.from_pretrained(build_model("llama"), first).eval()
        peft_hotswap_adapter(reference, str(second), adapter_name="default")
        torch.testing.assert_close(_output(model), _output(reference), atol=1e-5, rtol=0)


def test_monteclora_hotswap_with_other_settings_is_refused(tmp_path: Path) -> None:
    first = _save("mc", tmp_path / "first", seed=2)
    second = _save("mc", tmp_path / "second", seed=3, sample_scaler=0.5)
    model = peftkit.PeftModel.from_pretrained(build_model("llama"), first).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(HotswapError, match="MontecloraLinearVariant"):
        hotswap_adapter(model, str(second), adapter_name="default")
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize(("first", "second"), [("plain", "bdlora"), ("bdlora", "plain")])
def test_bdlora_and_plain_slots_refuse_each_other_naming_the_variant(first: str, second: str, tmp_path: Path) -> None:
    layout = {"target_modules_bd_a": ["down_proj"], "target_modules_bd_b": ["q_proj", "v_proj"], "nblocks": 2}
    for name, seed in ((first, 2), (second, 3)):
        sub = {"use_bdlora": peft.BdLoraConfig(**layout)} if name == "bdlora" else {}
        saved = peft.get_peft_model(build_model("llama"), peft.LoraConfig(r=4, target_modules=TARGETS, **sub))
        randomise_adapter(saved, seed=seed)
        saved.save_pretrained(tmp_path / name)
    model = peftkit.PeftModel.from_pretrained(build_model("llama"), tmp_path / first).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        HotswapError, match=r"BdLoraLinearVariant.*LoRA variant adapters swap only for the same variant"
    ):
        hotswap_adapter(model, str(tmp_path / second), adapter_name="default")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
