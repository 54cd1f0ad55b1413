"""transformers' adapter methods on PreTrainedModel, implemented by peftkit: the issue's example, agreement
with transformers + the reference peft (both directions), class identity / pickling, trainability, errors."""

from __future__ import annotations

import copy
import inspect
import io
import os
import pickle

import peft
import pytest
import torch
from tests._tiny import BUILDERS, inputs_for, output_of, tiny_llama
from tests.integration._transformers_fixtures import (  # noqa: F401 (fixture)
    lora,
    patched,
)
from transformers import AutoModelForCausalLM, GenerationMixin, LlamaForCausalLM, PreTrainedModel

import peftkit

ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors"]


def trainable(model: torch.nn.Module) -> set[str]:
    return {name for name, param in model.named_parameters() if param.requires_grad}


def test_issue_example(patched, tmp_path) -> None:  # noqa: F811
    tiny_llama().save_pretrained(tmp_path / "base")
    base_out = output_of(tiny_llama(), x := inputs_for(tiny_llama()))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    model.add_adapter(peftkit.LoraConfig(r=8, lora_alpha=32, init_lora_weights=False), adapter_name="my_adapter")
    model.add_adapter(peftkit.LoraConfig(r=16, lora_alpha=64, init_lora_weights=False), adapter_name="adapter_2")
    model.set_adapter("adapter_2")
    assert model.active_adapters() == ["adapter_2"]
    adapted = output_of(model, x)
    assert not torch.allclose(adapted, base_out, atol=1e-3)
    model.disable_adapters()
    torch.testing.assert_close(output_of(model, x), base_out)
    model.enable_adapters()
    torch.testing.assert_close(output_of(model, x), adapted)
    assert trainable(model) and all(".adapter_2." in n for n in trainable(model))
    model.delete_adapter("my_adapter")
    assert not any("my_adapter" in key for key in model.state_dict())
    model.save_pretrained(tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ADAPTER_FILES
    model.load_adapter(tmp_path / "out", adapter_name="x")
    assert model.active_adapters() == ["adapter_2"]
    model.set_adapter("x")
    torch.testing.assert_close(output_of(model, x), adapted)
    for loaded in (
        peftkit.AutoModelForCausalLM.from_pretrained(tmp_path / "out"),
        AutoModelForCausalLM.from_pretrained(tmp_path / "out"),
    ):
        assert type(loaded).__name__ == "LlamaForCausalLM" and loaded.active_adapters() == ["default"]
        torch.testing.assert_close(output_of(loaded, x), adapted)
        assert not trainable(loaded) and not loaded.training


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_adapters_move_between_peftkit_and_transformers_with_peft(arch: str, tmp_path) -> None:
    """Oracle: transformers' own methods backed by the reference peft, on the same base weights."""
    ours = peftkit.enable_adapter_methods(BUILDERS[arch]())
    ours.add_adapter(lora(), adapter_name="mine")
    ours.save_pretrained(tmp_path / "ours")
    reference = BUILDERS[arch]()
    reference.load_adapter(str(tmp_path / "ours"), adapter_name="mine")
    x = inputs_for(ours)
    torch.testing.assert_close(output_of(reference, x), output_of(ours, x), atol=1e-5, rtol=1e-5)
    assert set(reference.get_adapter_state_dict("mine")) == set(ours.get_adapter_state_dict("mine"))
    assert set(reference.state_dict()) == set(ours.state_dict())

    theirs = BUILDERS[arch]()
    theirs.add_adapter(peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=False), adapter_name="theirs")
    theirs.save_pretrained(str(tmp_path / "theirs"))
    ours2 = peftkit.enable_adapter_methods(BUILDERS[arch]())
    ours2.load_adapter(tmp_path / "theirs", adapter_name="theirs")
    torch.testing.assert_close(output_of(ours2, x), output_of(theirs, x), atol=1e-5, rtol=1e-5)
    assert not any(isinstance(m, peft.tuners.tuners_utils.BaseTunerLayer) for m in ours2.modules())


def test_precedence_over_reference_peft(patched) -> None:  # noqa: F811
    model = tiny_llama()
    model.add_adapter(peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=False), adapter_name="cfg_from_peft")
    assert isinstance(model.peft_config["cfg_from_peft"], peftkit.LoraConfig)
    layers = [m for m in model.modules() if "lora" in type(m).__module__]
    assert layers and all(type(m).__module__.startswith("peftkit.") for m in layers)


def test_class_identity_pickle_deepcopy_state_dict(tmp_path) -> None:
    model = tiny_llama()
    signature = inspect.signature(model.forward)
    peftkit.enable_adapter_methods(model).add_adapter(lora())
    cls = type(model)
    assert (cls.__name__, cls.__qualname__, cls.__module__) == (
        "LlamaForCausalLM",
        LlamaForCausalLM.__qualname__,
        LlamaForCausalLM.__module__,
    )
    assert isinstance(model, (LlamaForCausalLM, PreTrainedModel, GenerationMixin))
    assert inspect.signature(model.forward) == signature
    x = inputs_for(model)
    expected = output_of(model, x)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    copies = [copy.deepcopy(model), pickle.loads(pickle.dumps(model)), torch.load(buffer, weights_only=False)]
    for clone in copies:
        assert type(clone) is cls and clone.active_adapters() == ["default"]
        torch.testing.assert_close(output_of(clone, x), expected)
    copies[0].delete_adapter("default")
    assert model.active_adapters() == ["default"]
    torch.testing.assert_close(output_of(model, x), expected)
    fresh = peftkit.enable_adapter_methods(tiny_llama(seed=7))
    fresh.add_adapter(lora())
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(output_of(fresh, x), expected)


def test_trainability_follows_transformers(tmp_path) -> None:
    model = peftkit.enable_adapter_methods(tiny_llama())
    model.add_adapter(lora(), adapter_name="a")
    assert trainable(model) and all(".lora_" in n and ".a." in n for n in trainable(model))
    model.add_adapter(lora(), adapter_name="b")  # transformers activates the added adapter
    assert model.active_adapters() == ["b"] and all(".b." in n for n in trainable(model))
    model.save_pretrained(tmp_path / "b")
    model.train()
    model.load_adapter(tmp_path / "b", adapter_name="c")  # frozen, not activated, eval mode
    assert model.active_adapters() == ["b"] and all(".b." in n for n in trainable(model)) and not model.training
    model.set_adapter(["a", "b"])
    assert {n.split(".")[-2] for n in trainable(model)} == {"a", "b"}
    model.set_adapter("c")
    assert not trainable(model)
    model.load_adapter(tmp_path / "b", adapter_name="d", is_trainable=True)
    model.set_adapter("d")
    assert trainable(model) and all(".d." in n for n in trainable(model))
    model.disable_adapters()
    assert not trainable(model)
    model.enable_adapters()
    assert trainable(model) and all(".d." in n for n in trainable(model))


def test_get_state_dict_and_load_from_state_dict() -> None:
    model = peftkit.enable_adapter_methods(tiny_llama())
    model.add_adapter(lora(r=2, alpha=6, target_modules=["q_proj", "down_proj"]), adapter_name="a")
    state = model.get_adapter_state_dict()
    assert state and all(".lora_" in k and ".a." not in k and not k.startswith("base_model") for k in state)
    other = peftkit.enable_adapter_methods(tiny_llama())
    other.load_adapter(peft_config=model.peft_config["a"].to_dict(), adapter_state_dict=state, adapter_name="a")
    x = inputs_for(model)
    torch.testing.assert_close(output_of(other, x), output_of(model, x))


def test_deleting_every_adapter_gives_back_the_plain_model(tmp_path) -> None:
    model = peftkit.enable_adapter_methods(tiny_llama())
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    model.add_adapter(lora(), adapter_name="a")
    model.add_adapter(lora(), adapter_name="b")
    model.delete_adapter(["a", "b"])
    assert model.state_dict().keys() == base_state.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in base_state.items())
    with pytest.raises(ValueError, match="No adapter loaded"):
        model.active_adapters()
    model.save_pretrained(tmp_path / "full")  # a plain transformers save again
    assert "config.json" in os.listdir(tmp_path / "full") and "adapter_config.json" not in os.listdir(tmp_path / "full")


def test_errors_are_clear_and_leave_the_model_unchanged(tmp_path) -> None:
    model = peftkit.enable_adapter_methods(tiny_llama())
    for call in (model.active_adapters, model.disable_adapters, lambda: model.set_adapter("x")):
        with pytest.raises(peftkit.AdapterNameError, match="No adapter loaded"):
            call()
    with pytest.raises(TypeError, match="PeftConfig"):
        model.add_adapter({"r": 4}.items())
    model.add_adapter(lora(), adapter_name="a")
    with pytest.raises(peftkit.AdapterNameError, match="already exists"):
        model.add_adapter(lora(), adapter_name="a")
    with pytest.raises(peftkit.AdapterNameError, match="not found"):
        model.set_adapter(["a", "missing"])
    with pytest.raises(TypeError, match="unexpected keyword"):
        model.load_adapter(tmp_path, adapter_name="b", colour="red")

    wider = peftkit.enable_adapter_methods(tiny_llama())
    wider.add_adapter(lora(r=6))
    wider.save_pretrained(tmp_path / "r6")
    config = peftkit.LoraConfig.from_pretrained(tmp_path / "r6")
    config.r = 4  # the file's tensors no longer fit the config
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(peftkit.CheckpointError, match="shape mismatch"):
        model.load_adapter(peft_config=config, adapter_state_dict=wider.get_adapter_state_dict(), adapter_name="bad")
    assert model.state_dict().keys() == before.keys() and list(model.peft_config) == ["a"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    model.add_adapter(lora(), adapter_name="b")
    model.set_adapter(["a", "b"])
    with pytest.raises(ValueError, match="2 are active"):
        model.save_pretrained(tmp_path / "two")
    model.save_pretrained(tmp_path / "two", selected_adapters=["a", "b"])
    assert sorted(os.listdir(tmp_path / "two")) == ["a", "b"]
