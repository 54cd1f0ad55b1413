"""The adapter-state contract, for every method of ``_methods.METHOD_CASES`` and every model style that serves it
(``PeftModel`` and the prompt models, transformers models with peftkit's adapter methods, the Trainer's
adapter checkpoints): what trains and what the model computes after disable / enable, nested disabling,
adding and loading frozen and trainable adapters in every order, and deleting the active adapter.

The expected trainable set is written per step from the rules of ``peftkit.layers.state``: the first adapter
trains unless loaded for inference, ``add_adapter`` and frozen loads change nothing, a trainable load adds the
newcomer, disabling freezes everything and enabling gives back exactly what trained before.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from tests.contract._methods import (
    METHOD_CASES,
    MethodCase,
    adapter_tensors,
    expected_trainable,
    output,
    randomise,
    trainable,
    with_adapter,
)

import peftkit as peft
from peftkit.errors import ConfigError
from peftkit.integrations.trainer import load_adapter_checkpoint, save_adapter_checkpoint

STEPS = ("add", "load_frozen", "load_trainable")


def fresh(method: MethodCase, adapter: str = "one", seed: int = 5) -> peft.PeftModel:
    """A new model with one random, trainable adapter."""
    return with_adapter(method, adapter, seed)


def saved(method: MethodCase, directory: Path, seed: int) -> Path:
    """Save a random adapter of ``method`` (seed ``seed``) into ``directory``."""
    fresh(method, "default", seed).save_pretrained(directory)
    return directory


# -- disabling --------------------------------------------------------------------------------------------
def test_disable_context_restores_trainability_and_output(method: MethodCase) -> None:
    model = fresh(method)
    x = method.inputs()
    before, adapted = trainable(model), output(model, x)
    assert before == expected_trainable(model, {"one"}) and before
    with model.disable_adapter():
        assert trainable(model) == set(), "nothing trains while adapters are disabled"
        torch.testing.assert_close(output(model, x), output(method.base(), x), rtol=0, atol=0)
    assert trainable(model) == before
    torch.testing.assert_close(output(model, x), adapted, rtol=0, atol=0)


def test_nested_disable_stays_disabled_until_the_outer_block_ends(method: MethodCase) -> None:
    model = fresh(method)
    x = method.inputs()
    base, adapted = output(method.base(), x), output(model, x)
    assert adapted.shape != base.shape or not torch.allclose(base, adapted)  # prompts add virtual tokens
    with model.disable_adapter():
        with model.disable_adapter():
            pass
        assert output(model, x).shape == base.shape == (2, 7, base.shape[-1]) or base.dim() == 2
        torch.testing.assert_close(output(model, x), base, rtol=0, atol=0)
        assert trainable(model) == set()
    torch.testing.assert_close(output(model, x), adapted, rtol=0, atol=0)
    assert trainable(model) == expected_trainable(model, {"one"})


def test_disable_context_keeps_adapters_disabled_before_it(method: MethodCase) -> None:
    model = fresh(method)
    x = method.inputs()
    base, before = output(method.base(), x), trainable(model)
    tuner = model._tuner  # prompt models: the prompt tuner; layer methods: model.base_model
    tuner.disable_adapter_layers()
    assert trainable(model) == set()
    with model.disable_adapter():
        pass
    torch.testing.assert_close(output(model, x), base, rtol=0, atol=0)
    assert trainable(model) == set(), "leaving the block must not re-enable what was disabled before it"
    tuner.enable_adapter_layers()
    assert trainable(model) == before


# -- adding and loading in every order --------------------------------------------------------------------
def _first(method: MethodCase, how: str, directory: Path) -> tuple[peft.PeftModel, set[str]]:
    if how == "create":
        return fresh(method), {"one"}
    is_trainable = how == "load_trainable"
    model = peft.PeftModel.from_pretrained(method.base(), directory, adapter_name="one", is_trainable=is_trainable)
    return model, {"one"} if is_trainable else set()


def _step(model: peft.PeftModel, method: MethodCase, step: str, directory: Path, training: set[str]) -> set[str]:
    """Apply ``step`` (adapter name = step name); returns the adapters that must train afterwards."""
    refused = (
        method.one_trainable and step != "load_frozen" and any(not c.inference_mode for c in model.peft_config.values())
    )
    if refused:
        before = trainable(model)
        with pytest.raises(ConfigError, match="only 1 trainable adapter"):
            _do(model, method, step, directory)
        assert trainable(model) == before and step not in model.peft_config
        return training
    _do(model, method, step, directory)
    return training | {step} if step == "load_trainable" else training


def _do(model: peft.PeftModel, method: MethodCase, step: str, directory: Path) -> None:
    if step == "add":
        model.add_adapter(step, method.config())
    else:
        model.load_adapter(directory, adapter_name=step, is_trainable=step == "load_trainable")


@pytest.mark.parametrize("first", ["create", "load_frozen", "load_trainable"])
def test_adding_and_loading_in_every_order(method: MethodCase, first: str, tmp_path: Path) -> None:
    directory = saved(method, tmp_path / "saved", seed=7)
    x = method.inputs()
    for order in itertools.permutations(STEPS):
        model, training = _first(method, first, directory)
        model.train()
        expected_out = output(model.eval(), x)
        for step in order:
            training = _step(model, method, step, directory, training)
            assert trainable(model) == expected_trainable(model, training), (order, step)
            assert model.active_adapters == ["one"], (order, step)
        torch.testing.assert_close(output(model.eval(), x), expected_out, rtol=0, atol=0)
        with model.disable_adapter():
            assert trainable(model) == set()
        assert trainable(model) == expected_trainable(model, training), order


def test_loading_a_second_frozen_adapter_leaves_nothing_trainable(method: MethodCase, tmp_path: Path) -> None:
    directory = saved(method, tmp_path / "saved", seed=7)
    model = peft.PeftModel.from_pretrained(method.base(), directory, adapter_name="one", is_trainable=False)
    model.load_adapter(directory, adapter_name="two", is_trainable=False)
    assert trainable(model) == set()


# -- deleting ---------------------------------------------------------------------------------------------
def _second_adapters(method: MethodCase) -> list[str]:
    if method.one_trainable:
        return ["load_frozen"]  # AdaLoRA: a second trainable adapter is refused (tested above)
    return ["add", "load_frozen", "load_trainable"]  # every method's file loads for training (P-tuning's as a table)


@pytest.mark.parametrize(
    ("method", "second"),
    [(m, s) for m in METHOD_CASES for s in _second_adapters(m)],
    ids=[f"{m.name}-{s}" for m in METHOD_CASES for s in _second_adapters(m)],
)
def test_delete_active_adapter(method: MethodCase, second: str, tmp_path: Path) -> None:
    directory = saved(method, tmp_path / "two", seed=9)
    model = fresh(method)
    if second == "add":
        model.add_adapter("two", method.config())
        model.set_adapter("two")
        model.save_pretrained(tmp_path / "added", selected_adapters=["two"])
        directory = tmp_path / "added" / "two"
        model.set_adapter("one")
    else:
        model.load_adapter(directory, adapter_name="two", is_trainable=second == "load_trainable")
    x = method.inputs()
    model.delete_adapter("one")
    assert list(model.peft_config) == ["two"] and model.active_adapters == ["two"]
    # "one" trained, so its successor trains -- unless it was loaded for inference
    assert trainable(model) == (set() if second == "load_frozen" else adapter_tensors(model, "two"))
    alone = peft.PeftModel.from_pretrained(method.base(), directory, adapter_name="two")
    torch.testing.assert_close(output(model.eval(), x), output(alone, x), rtol=0, atol=0)


def test_delete_inactive_adapter_keeps_active_and_trainable(method: MethodCase, tmp_path: Path) -> None:
    model = fresh(method)
    model.load_adapter(saved(method, tmp_path / "two", seed=9), adapter_name="two")
    x = method.inputs()
    before_out, before = output(model, x), trainable(model)
    model.delete_adapter("two")
    assert model.active_adapters == ["one"] and trainable(model) == before
    torch.testing.assert_close(output(model, x), before_out, rtol=0, atol=0)


# -- transformers models with peftkit's adapter methods ----------------------------------------------------
def _inplace(method: MethodCase) -> torch.nn.Module:
    model = peft.enable_adapter_methods(method.base())
    model.add_adapter(method.config(), adapter_name="one")
    randomise(model, "one")
    return model


def test_inplace_disable_enable_restores_trainability_and_output(layer_method: MethodCase) -> None:
    method = layer_method
    model = _inplace(method)
    x = method.inputs()
    before, adapted = trainable(model), output(model, x)
    assert before == expected_trainable(model, {"one"}) and before
    model.disable_adapters()
    assert trainable(model) == set()
    torch.testing.assert_close(output(model, x), output(method.base(), x), rtol=0, atol=0)
    model.enable_adapters()
    assert trainable(model) == before
    torch.testing.assert_close(output(model, x), adapted, rtol=0, atol=0)


@pytest.mark.parametrize("order", list(itertools.permutations(("load_frozen", "load_trainable"))))
def test_inplace_loading_frozen_and_trainable(layer_method: MethodCase, order: tuple[str, ...], tmp_path: Path) -> None:
    method = layer_method
    directory = saved(method, tmp_path / "saved", seed=7)
    model = peft.enable_adapter_methods(method.base())
    model.load_adapter(directory, adapter_name="one", is_trainable=False)
    assert trainable(model) == set() and model.active_adapters() == ["one"]
    training: set[str] = set()
    for step in order:
        model.load_adapter(directory, adapter_name=step, is_trainable=step == "load_trainable")
        training |= {step} if step == "load_trainable" else set()
        assert trainable(model) == expected_trainable(model, training) and model.active_adapters() == ["one"]
    model.disable_adapters()
    model.enable_adapters()
    assert trainable(model) == expected_trainable(model, training)
    model.delete_adapter("one")  # frozen, so its successor (first in sorted order) does not start training
    assert model.active_adapters() == ["load_frozen"] and trainable(model) == expected_trainable(model, training)


# -- the Trainer's adapter checkpoints ---------------------------------------------------------------------
def test_checkpoint_written_while_disabled_restores_trainability(method: MethodCase, tmp_path: Path) -> None:
    directory = saved(method, tmp_path / "saved", seed=7)
    model = fresh(method)
    model.load_adapter(directory, adapter_name="frozen", is_trainable=False)
    with model.disable_adapter():
        save_adapter_checkpoint(model, tmp_path / "checkpoint")
    resumed = fresh(method, seed=11)
    load_adapter_checkpoint(resumed, tmp_path / "checkpoint")
    assert trainable(resumed) == expected_trainable(resumed, {"one"}) == trainable(model)
    x = method.inputs()
    torch.testing.assert_close(output(resumed.eval(), x), output(model.eval(), x), rtol=0, atol=0)
