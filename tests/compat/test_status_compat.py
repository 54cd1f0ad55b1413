"""``get_layer_status`` / ``get_model_status`` give the reference's fields and values on the same model after
the same steps: LoRA (with ``modules_to_save``, two adapters, merged, disabled, ``set_requires_grad``), IA3,
AdaLoRA, and adapters injected in place without a ``PeftModel``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from tests._tiny import tiny_llama

import peftkit

peft = pytest.importorskip("peft")


def _fields(record: Any) -> dict[str, Any]:
    return dataclasses.asdict(record)


def _both(make_config: Callable[[Any], Any], steps: Callable[[Any, Any], None] = lambda lib, m: None) -> list[Any]:
    """The same model and steps through peftkit and the reference."""
    models = []
    for lib in (peftkit, peft):
        model = lib.get_peft_model(tiny_llama(), make_config(lib))
        steps(lib, model)
        models.append(model)
    return models


def _assert_same_status(ours: Any, theirs: Any) -> None:
    ours_layers = [_fields(r) for r in peftkit.get_layer_status(ours)]
    assert ours_layers == [_fields(r) for r in peft.get_layer_status(theirs)]
    assert _fields(peftkit.get_model_status(ours)) == _fields(peft.get_model_status(theirs))


def _two_adapters(lib: Any, model: Any) -> None:
    model.add_adapter("other", lib.LoraConfig(r=2, target_modules=["q_proj", "up_proj"]))


CASES: dict[str, tuple[Callable[[Any], Any], Callable[[Any, Any], None]]] = {
    "lora": (lambda lib: lib.LoraConfig(r=4, modules_to_save=["lm_head"]), lambda lib, m: None),
    "lora-two-adapters": (lambda lib: lib.LoraConfig(r=4), _two_adapters),
    "lora-set-adapter-other": (
        lambda lib: lib.LoraConfig(r=4),
        lambda lib, m: (_two_adapters(lib, m), m.set_adapter("other")),
    ),
    "lora-requires-grad": (
        lambda lib: lib.LoraConfig(r=4),
        lambda lib, m: (_two_adapters(lib, m), m.set_requires_grad("other", True)),
    ),
    "lora-merged": (lambda lib: lib.LoraConfig(r=4, init_lora_weights=False), lambda lib, m: m.merge_adapter()),
    "lora-disabled": (lambda lib: lib.LoraConfig(r=4), lambda lib, m: m.base_model.disable_adapter_layers()),
    "ia3": (lambda lib: lib.IA3Config(), lambda lib, m: None),
    "adalora": (lambda lib: lib.AdaLoraConfig(init_r=6, target_r=4, total_step=10), lambda lib, m: None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_status_matches_the_reference(case: str) -> None:
    make_config, steps = CASES[case]
    ours, theirs = _both(make_config, steps)
    _assert_same_status(ours, theirs)


def test_status_of_in_place_adapters_matches_the_reference() -> None:
    ours = peftkit.inject_adapter_in_model(peftkit.LoraConfig(r=4), tiny_llama())
    theirs = peft.inject_adapter_in_model(peft.LoraConfig(r=4), tiny_llama())
    _assert_same_status(ours, theirs)


def test_status_errors_where_the_reference_errors() -> None:
    with pytest.raises(ValueError):  # no adapter layers
        peftkit.get_layer_status(tiny_llama())
    prompt = peftkit.get_peft_model(
        tiny_llama(), peftkit.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2)
    )
    with pytest.raises(TypeError):
        peftkit.get_model_status(prompt)


def test_peft_model_status_methods_match_the_reference() -> None:
    """``PeftModel.get_layer_status()`` / ``get_model_status()`` (PEFT's methods) equal the reference's."""
    import peft as reference
    import torch
    from torch import nn

    def build() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))

    ours = peftkit.get_peft_model(build(), peftkit.LoraConfig(target_modules=["0", "2"]))
    theirs = reference.get_peft_model(build(), reference.LoraConfig(target_modules=["0", "2"]))
    for model in (ours, theirs):
        model.disable_adapter_layers()
    mine, reference_layers = ours.get_layer_status(), theirs.get_layer_status()
    assert [dataclasses.asdict(s) for s in mine] == [dataclasses.asdict(s) for s in reference_layers]
    assert dataclasses.asdict(ours.get_model_status()) == dataclasses.asdict(theirs.get_model_status())
