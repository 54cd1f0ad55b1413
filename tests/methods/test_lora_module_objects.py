"""The module objects injection builds from prototypes (``peftkit.layers.fresh``) behave as constructed ones.

Injection builds PEFT's layout (wrapper, six per-adapter containers, factor ``nn.Linear``, dropout module)
without ``nn.Module.__init__``; every public access must still work: state-dict keys and ``named_modules()``
as PEFT's, ``print``, hooks, ``to()``, ``deepcopy``, pickling, ``torch.compile``, and the load path's eval
switch. Outputs are compared with the reference peft on the same weights, or with the eager model.
"""

from __future__ import annotations

import copy
import io
import pickle

import peft
import pytest
import torch
from tests._tiny import build_model, model_inputs, model_output, randomise_adapter
from torch import nn

import peftkit
from peftkit.layers.fresh import new_module
from peftkit.layers.walk import all_parameters, switch_to_eval
from peftkit.methods.lora.layer import LoraLayer

CONFIG = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]}


def _pair() -> tuple[nn.Module, nn.Module]:
    """The same LoRA in peftkit and in the reference, random non-zero weights, copied from peftkit's."""
    kit = peftkit.get_peft_model(build_model("llama"), peftkit.LoraConfig(**CONFIG))
    ref = peft.get_peft_model(build_model("llama"), peft.LoraConfig(**CONFIG))
    randomise_adapter(kit)
    ref.load_state_dict(kit.state_dict())
    return kit, ref


@pytest.mark.parametrize(
    "cls, args",
    [(nn.ModuleDict, ()), (nn.ParameterDict, ()), (nn.Identity, ()), (nn.Dropout, (0.5,)), (nn.Linear, (3, 2))],
)
def test_prototype_copy_has_the_constructors_attributes_with_fresh_containers(cls: type, args: tuple) -> None:
    built, fresh = cls(*args), new_module(cls)
    assert type(fresh) is cls and set(fresh.__dict__) == set(built.__dict__)
    for key, value in built.__dict__.items():
        if isinstance(value, (dict, set, list)):
            assert type(fresh.__dict__[key]) is type(value) and not fresh.__dict__[key]
    other = new_module(cls)
    for key, value in fresh.__dict__.items():
        if isinstance(value, (dict, set, list)):  # never shared between two objects
            assert value is not other.__dict__[key]


def test_state_dict_named_modules_and_outputs_match_the_reference() -> None:
    kit, ref = _pair()
    assert list(kit.state_dict()) == list(ref.state_dict())
    assert [n for n, _ in kit.named_modules()] == [n for n, _ in ref.named_modules()]
    assert [n for n, p in kit.named_parameters() if p.requires_grad] == [
        n for n, p in ref.named_parameters() if p.requires_grad
    ]
    inputs = model_inputs("llama")
    torch.testing.assert_close(model_output(kit, inputs), model_output(ref, inputs))


def test_print_shows_every_container_and_entry() -> None:
    kit, ref = _pair()
    text, expected = str(kit), str(ref)
    parts = (
        "(lora_dropout): ModuleDict",
        "(default): Identity()",
        "(lora_embedding_A): ParameterDict()",
        "(lora_magnitude_vector): ModuleDict()",
        "(default): Linear(in_features=16, out_features=4, bias=False)",
    )
    for part in parts:
        assert text.count(part) == expected.count(part) > 0


def test_hooks_on_a_factor_belong_to_that_module_only() -> None:
    kit, _ = _pair()
    layers = [m for m in kit.modules() if isinstance(m, LoraLayer)]
    seen: list[tuple[int, ...]] = []
    factor = layers[0].lora_A["default"]
    handle = factor.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    others = [m for layer in layers for m in layer.modules() if m is not factor]
    assert all(not m._forward_hooks for m in others)
    for layer in layers[:2]:
        layer.lora_A["default"](torch.randn(3, 16))
    assert seen == [(3, 4)]
    handle.remove()
    assert not factor._forward_hooks


def test_to_deepcopy_and_pickle_keep_outputs() -> None:
    kit, _ = _pair()
    inputs = model_inputs("llama")
    expected = model_output(kit, inputs)
    copied = copy.deepcopy(kit)
    torch.testing.assert_close(model_output(copied, inputs), expected)
    assert not {id(p) for p in copied.parameters()} & {id(p) for p in kit.parameters()}
    buffer = io.BytesIO()
    pickle.dump(kit, buffer)
    restored = pickle.loads(buffer.getvalue())
    torch.testing.assert_close(model_output(restored, inputs), expected)
    doubled = copy.deepcopy(kit).to(torch.float64)
    assert all(p.dtype == torch.float64 for n, p in doubled.named_parameters() if ".lora_" in n)
    torch.testing.assert_close(model_output(doubled, inputs).float(), expected, rtol=1e-4, atol=1e-5)


def test_torch_compile_traces_the_new_objects() -> None:
    kit, _ = _pair()
    inputs = model_inputs("llama")
    expected = model_output(kit, inputs)
    compiled = torch.compile(kit, backend="eager", fullgraph=False)
    torch.testing.assert_close(model_output(compiled, inputs), expected)


def test_all_parameters_is_parameters_and_skips_only_adapter_tensors() -> None:
    kit, _ = _pair()
    assert {id(p) for p in all_parameters(kit)} == {id(p) for p in kit.parameters()}
    outside = {id(p) for p in all_parameters(kit, skip_adapter_tensors=True)}
    assert outside == {id(p) for n, p in kit.named_parameters() if ".lora_A." not in n and ".lora_B." not in n}


class _CountingTrain(nn.Module):
    """A module whose ``train`` override must run when the model is switched to eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def train(self, mode: bool = True) -> _CountingTrain:
        self.calls += 1
        return super().train(mode)


@pytest.mark.parametrize("start_in_train_mode", [False, True])
def test_load_for_inference_leaves_every_module_in_eval_mode(tmp_path, start_in_train_mode: bool) -> None:
    kit, _ = _pair()
    kit.save_pretrained(tmp_path)
    kit.train(start_in_train_mode)
    kit.load_adapter(str(tmp_path), adapter_name="other")
    assert not any(m.training for m in kit.modules())
    trainable = copy.deepcopy(kit).train(False)
    trainable.load_adapter(str(tmp_path), adapter_name="third", is_trainable=True)
    assert any(m.training for m in trainable.modules())  # PEFT leaves a trainable load in training mode


def test_switch_to_eval_runs_train_overrides_of_modules_in_training_mode() -> None:
    model = nn.Sequential(nn.Linear(2, 2), _CountingTrain()).eval()
    model[0].train()
    switch_to_eval(model)  # only a plain module in training mode: its flag is set directly
    assert not any(m.training for m in model.modules()) and model[1].calls == 1
    model[1].training = True
    switch_to_eval(model)  # the override is in training mode: the real eval() runs it
    assert not any(m.training for m in model.modules()) and model[1].calls == 2


def test_building_prototypes_draws_no_random_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same seed gives the same adapter whether or not this process has built prototypes yet (building one
    runs a constructor that draws, e.g. ``nn.Linear``'s initialisation)."""
    from peftkit.layers import fresh

    def adapter_after_seed() -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = peftkit.get_peft_model(nn.Sequential(nn.Linear(6, 5)), peftkit.LoraConfig(r=2, target_modules=["0"]))
        return {k: v.clone() for k, v in peftkit.get_peft_model_state_dict(model).items()}

    monkeypatch.setattr(fresh, "_PROTOTYPES", {})  # as in a fresh process: no prototype built yet
    first = adapter_after_seed()
    again = adapter_after_seed()  # prototypes built now
    assert first.keys() == again.keys()
    for key in first:
        torch.testing.assert_close(first[key], again[key], rtol=0, atol=0)
