"""Unknown, duplicate and invalid adapter names: AdapterNameError, and the model stays exactly as it was."""

from __future__ import annotations

import pytest

import peftkit as peft
from peftkit.errors import AdapterNameError

INVALID = ["a.b", "", "__base__"]


@pytest.fixture
def model(toy):
    model = peft.get_peft_model(toy(), peft.LoraConfig(r=2, init_lora_weights=False))
    model.add_adapter("other", peft.LoraConfig(r=2, init_lora_weights=False))
    return model


@pytest.fixture
def saved(toy, tmp_path):
    peft.get_peft_model(toy(), peft.LoraConfig(r=2, init_lora_weights=False)).save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize("names", ["nope", ["default", "nope"]])
def test_set_unknown_adapter(model, unchanged, names) -> None:
    check = unchanged(model)
    with pytest.raises(AdapterNameError, match=r"\['nope'\] not found; present: \['default', 'other'\]"):
        model.set_adapter(names)
    check()


def test_delete_unknown_adapter(model, unchanged) -> None:
    check = unchanged(model)
    with pytest.raises(AdapterNameError, match="nope"):
        model.delete_adapter("nope")
    check()


def test_add_duplicate_adapter(model, unchanged) -> None:
    check = unchanged(model)
    with pytest.raises(AdapterNameError, match="'other' already exists"):
        model.add_adapter("other", peft.LoraConfig(r=4))
    check()


@pytest.mark.parametrize("name", INVALID)
def test_add_invalid_adapter_name(model, unchanged, name: str) -> None:
    check = unchanged(model)
    with pytest.raises(AdapterNameError, match="Invalid adapter name"):
        model.add_adapter(name, peft.LoraConfig(r=4))
    check()


@pytest.mark.parametrize("name", INVALID)
def test_get_peft_model_with_invalid_name(toy, unchanged, name: str) -> None:
    base = toy()
    check = unchanged(base)
    with pytest.raises(AdapterNameError, match="Invalid adapter name"):
        peft.get_peft_model(base, peft.LoraConfig(r=4), adapter_name=name)
    check()


def test_load_adapter_under_a_taken_name_that_does_not_fit(model, toy, tmp_path, unchanged) -> None:
    """A taken name is overwritten in place (tests/unit/test_load_existing_name.py), but only with weights that
    fit it: here rank 4 into rank 2."""
    peft.get_peft_model(toy(), peft.LoraConfig(r=4, init_lora_weights=False)).save_pretrained(tmp_path)
    check = unchanged(model)
    with pytest.raises(peft.CheckpointError, match=r"checkpoint \(4, \d+\) vs model \(2, \d+\)"):
        model.load_adapter(tmp_path, adapter_name="other")
    check()


@pytest.mark.parametrize("name", INVALID)
def test_load_adapter_under_an_invalid_name(model, saved, unchanged, name: str) -> None:
    check = unchanged(model)
    with pytest.raises(AdapterNameError, match="Invalid adapter name"):
        model.load_adapter(saved, adapter_name=name)
    check()


def test_state_dict_of_unknown_adapter(model) -> None:
    with pytest.raises(AdapterNameError, match="nope"):
        model.get_adapter_state_dict("nope")
    with pytest.raises(AdapterNameError, match="nope"):
        peft.get_peft_model_state_dict(model, adapter_name="nope")
