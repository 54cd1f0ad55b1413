"""The adapter-state faults of issue 9, each with its right value, and trainable sets compared with the
reference ``peft`` 0.21.2 doing the same sequence where the reference is right.

Where peftkit departs from the reference on purpose (see ``peftkit.layers.state``): leaving
``disable_adapter()`` (or ``enable_adapter_layers()``) gives back exactly what trained before (the reference
makes the active adapter trainable, even one loaded for inference, and drops other trainable adapters), and
activating an adapter loaded with ``is_trainable=False`` does not make it train.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests._tiny import build
from torch import nn

import peftkit as peft
from peftkit.errors import AdapterNameError
from peftkit.layers.modules_to_save import ModulesToSaveWrapper


def trainable(model: nn.Module) -> set[str]:
    return {name for name, param in model.named_parameters() if param.requires_grad}


def llama_lora(lib: object = peft) -> object:
    config = lib.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"])  # type: ignore[attr-defined]
    return lib.get_peft_model(build("llama"), config)  # type: ignore[attr-defined]


class LinHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lin(x))


def lin_head(seed: int = 0) -> LinHead:
    torch.manual_seed(seed)
    return LinHead()


@pytest.fixture
def lin_head_adapter(tmp_path: Path) -> Path:
    """A LoRA adapter on ``lin`` with a modules_to_save copy of ``head``, saved."""
    model = peft.get_peft_model(lin_head(), peft.LoraConfig(r=2, target_modules=["lin"], modules_to_save=["head"]))
    model.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


def test_disable_context_keeps_nine_trainable_tensors() -> None:
    model = llama_lora()
    assert len(trainable(model)) == 9  # 2 layers x (q, v) x (A, B) + the lm_head copy
    with model.disable_adapter():
        pass
    assert len(trainable(model)) == 9


def test_inplace_disable_enable_keeps_nine_trainable_tensors() -> None:
    model = peft.enable_adapter_methods(build("llama"))
    model.add_adapter(peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"]))
    assert len(trainable(model)) == 9
    model.disable_adapters()
    assert len(trainable(model)) == 0
    model.enable_adapters()
    assert len(trainable(model)) == 9


def one_by_one_lora() -> peft.PeftModel:
    """``y = w x + B A x`` with ``w = A = B = 1`` (r = alpha = 1): 2.0 at ``x = 1`` with the adapter, 1.0 without."""
    base = nn.Sequential(nn.Linear(1, 1, bias=False))
    nn.init.ones_(base[0].weight)
    model = peft.get_peft_model(base, peft.LoraConfig(r=1, lora_alpha=1, target_modules=["0"]))
    layer = model.base_model.model[0]
    nn.init.ones_(layer.lora_A["default"].weight)
    nn.init.ones_(layer.lora_B["default"].weight)
    return model


def test_nested_disable_gives_the_base_output() -> None:
    model = one_by_one_lora()
    x = torch.ones(1, 1)
    assert model(x).item() == 2.0
    with model.disable_adapter():
        with model.disable_adapter():
            pass
        assert model(x).item() == 1.0
    assert model(x).item() == 2.0


def test_prompt_tuning_nested_disable_gives_base_length_logits() -> None:
    config = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    model = peft.get_peft_model(build("llama"), config)
    input_ids = torch.randint(2, 64, (2, 7), generator=torch.Generator().manual_seed(0))
    assert model(input_ids=input_ids).logits.shape[1] == 10
    with model.disable_adapter():
        with model.disable_adapter():
            pass
        assert model(input_ids=input_ids).logits.shape[1] == 7
    assert model(input_ids=input_ids).logits.shape[1] == 10


def test_second_frozen_load_leaves_nothing_trainable(lin_head_adapter: Path) -> None:
    model = peft.PeftModel.from_pretrained(lin_head(), lin_head_adapter, adapter_name="one", is_trainable=False)
    model.load_adapter(lin_head_adapter, "two", is_trainable=False)
    head = model.base_model.model.head
    assert not head.modules_to_save["one"].weight.requires_grad and not head.modules_to_save["one"].bias.requires_grad
    assert trainable(model) == set()


def test_disable_adapter_restores_previous_disabled_state() -> None:
    model = one_by_one_lora()
    x = torch.ones(1, 1)
    model.base_model.disable_adapter_layers()
    with model.disable_adapter():
        pass
    assert model(x).item() == 1.0 and trainable(model) == set()
    model.base_model.enable_adapter_layers()
    assert model(x).item() == 2.0 and len(trainable(model)) == 2


def test_trainable_load_next_to_frozen_adapters_trains_the_new_one(lin_head_adapter: Path) -> None:
    model = peft.PeftModel.from_pretrained(lin_head(), lin_head_adapter, adapter_name="one", is_trainable=False)
    model.load_adapter(lin_head_adapter, "two", is_trainable=True)
    assert trainable(model) == {
        "base_model.model.lin.lora_A.two.weight",
        "base_model.model.lin.lora_B.two.weight",
        "base_model.model.head.modules_to_save.two.weight",
        "base_model.model.head.modules_to_save.two.bias",
    }
    assert model.active_adapters == ["one"]


def test_disable_adapter_layers_freezes_modules_to_save_copies_like_the_reference() -> None:
    reference = pytest.importorskip("peft")
    ours, theirs = llama_lora(), llama_lora(reference)
    ours.base_model.disable_adapter_layers()
    theirs.base_model.disable_adapter_layers()
    assert trainable(ours) == trainable(theirs) == set()
    ours.base_model.enable_adapter_layers()
    theirs.base_model.enable_adapter_layers()
    assert trainable(ours) == trainable(theirs) and len(trainable(ours)) == 9


def test_modules_to_save_wrapper_lists_only_adapters_it_holds() -> None:
    model = peft.get_peft_model(lin_head(), peft.LoraConfig(r=2, target_modules=["lin"], modules_to_save=["head"]))
    model.add_adapter("plain", peft.LoraConfig(r=2, target_modules=["lin"]))  # no copy of head
    head = model.base_model.model.head
    model.set_adapter("plain")
    assert head.active_adapters == [] and model.active_adapters == ["plain"]
    x = torch.randn(3, 4)
    torch.testing.assert_close(head(x), head.original_module(x))
    model.set_adapter("default")
    assert head.active_adapters == ["default"]
    with pytest.raises(AdapterNameError, match="holds no copy"):
        head.set_adapter("plain")


def test_unknown_active_name_raises_instead_of_falling_back() -> None:
    wrapper = ModulesToSaveWrapper(nn.Linear(2, 2), "one")
    del wrapper.modules_to_save["one"]  # the active copy is gone behind the wrapper's back
    with pytest.raises(AdapterNameError, match="'one' has no copy"):
        wrapper(torch.randn(1, 2))


SEQUENCES = {
    # (first load trainable?, then: (name, is_trainable) loads / "set:<name>" / "delete:<name>" / "disable")
    "frozen+frozen": (False, [("two", False)]),
    "frozen+trainable": (False, [("two", True)]),
    "trainable+frozen": (True, [("two", False)]),
    "trainable+trainable": (True, [("two", True)]),
    "trainable+trainable, set": (True, [("two", True), "set:two"]),
    "trainable+frozen, delete inactive": (True, [("two", False), "delete:two"]),
    "trainable+trainable, delete active": (True, [("two", True), "set:two", "delete:two"]),
    "frozen+trainable, delete active": (False, [("two", True), "delete:one"]),
    "trainable, disable": (True, ["disable"]),
}


def _run(lib: object, directory: Path, first: bool, steps: list) -> list[set[str]]:
    model = lib.PeftModel.from_pretrained(lin_head(), directory, adapter_name="one", is_trainable=first)  # type: ignore[attr-defined]
    seen = [trainable(model)]
    for step in steps:
        if isinstance(step, tuple):
            model.load_adapter(directory, step[0], is_trainable=step[1])
        elif step == "disable":
            with model.disable_adapter():
                pass
        elif step.startswith("set:"):
            model.set_adapter(step[4:])
        else:
            model.delete_adapter(step[7:])
        seen.append(trainable(model))
    return seen


@pytest.mark.parametrize("sequence", sorted(SEQUENCES))
def test_trainable_sets_match_the_reference(sequence: str, lin_head_adapter: Path) -> None:
    reference = pytest.importorskip("peft")
    first, steps = SEQUENCES[sequence]
    assert _run(peft, lin_head_adapter, first, steps) == _run(reference, lin_head_adapter, first, steps)
