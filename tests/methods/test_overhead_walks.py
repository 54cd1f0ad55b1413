"""The shortened model walks and shared key maps of injection, loading and hot-swap find what the general
machinery finds.

* ``walk_model`` lists what ``named_modules()`` lists, in the same order, but for the insides of adapter
  modules (an adapter layer nested at ``base_layer`` and the layers it placed in its base module stay listed).
* The ``nn.MultiheadAttention`` search behind the unused-``out_proj`` warning finds what ``named_modules()``
  finds, whether the attention is plain or itself adapted.
* A load checks names and status from one walk: a taken name is still refused, the model left unchanged.
* An injection finds the taken names, the status and its targets (the ``all-linear`` expansion too) from one walk:
  a second ``all-linear`` adapter adapts what the reference adapts, never an adapter layer's insides.
* The variants' finishing walk runs only for configs that set a variant: :func:`sets_variant` knows every one.
* A hot-swap builds the slot's key map once (again only after growing a rank): the swapped model computes what
  the swapped-in adapter computes when loaded fresh, for a same-rank and a larger-rank swap.
"""

from __future__ import annotations

import copy
import gc

import peft
import pytest
import torch
from tests._tiny import build_model, model_inputs, model_output, randomise_adapter
from torch import nn
from torch.nn.modules import module as module_hooks

import peftkit
from peftkit.errors import AdapterNameError, TargetingError
from peftkit.hotswap import hotswap_adapter
from peftkit.layers.base import AdapterLayer
from peftkit.layers.modules_to_save import ModulesToSaveWrapper
from peftkit.layers.walk import walk_model
from peftkit.methods.lora.multihead import _attention_modules
from peftkit.methods.lora.variants import VARIANT_BUILDERS, build_variant, sets_variant


def _listed_by_walk(model: nn.Module) -> list[str]:
    """``named_modules()`` names that ``walk_model`` must list: those outside every adapter module, and adapter
    layers reached from their enclosing adapter modules through ``base_layer`` (nested methods, or an attention
    layer's ``out_proj`` layer inside its base module)."""
    modules = dict(model.named_modules())
    listed = []
    for name, module in modules.items():
        owners = [
            p
            for p in modules
            if p and name.startswith(p + ".") and isinstance(modules[p], (AdapterLayer, ModulesToSaveWrapper))
        ]
        if not owners or (isinstance(module, AdapterLayer) and name[len(owners[-1]) + 1 :].startswith("base_layer")):
            listed.append(name)
    return listed


def _models() -> list[nn.Module]:
    lora = peftkit.get_peft_model(
        build_model("llama"), peftkit.LoraConfig(r=4, target_modules="all-linear", modules_to_save=["lm_head"])
    )
    mixed = peftkit.get_peft_model(build_model("llama"), peftkit.LoraConfig(r=4, target_modules=["q_proj"]), mixed=True)
    mixed.add_adapter("other", peftkit.LoHaConfig(r=4, target_modules=["q_proj", "v_proj"]))
    attention = peftkit.get_peft_model(_Attend(), peftkit.LoraConfig(r=4, target_modules=["mha"]))
    return [lora, mixed, attention]


class _Attend(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(8, 2)
        self.inner = nn.Sequential(nn.Linear(8, 8))
        self.inner.attn = nn.MultiheadAttention(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(self.mha(x, x, x)[0] + self.inner.attn(x, x, x)[0])


@pytest.mark.parametrize("index", [0, 1, 2], ids=["lora+modules_to_save", "mixed-nested", "attention"])
def test_walk_model_lists_named_modules_outside_adapter_insides_in_order(index: int) -> None:
    model = _models()[index]
    assert [name for name, _ in walk_model(model)] == _listed_by_walk(model)


@pytest.mark.parametrize("targets", [["out_proj"], ["mha"], ["mha", "out_proj"], ["0"]])
def test_attention_search_finds_what_named_modules_finds(targets: list[str]) -> None:
    model = peftkit.get_peft_model(_Attend(), peftkit.LoraConfig(r=4, target_modules=targets))
    expected = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    found = _attention_modules(model)
    assert [n for n, _ in found] == [n for n, _ in expected] and all(a is b for (_, a), (_, b) in zip(found, expected))


def test_a_taken_name_is_refused_and_the_model_is_unchanged() -> None:
    model = peftkit.get_peft_model(build_model("llama"), peftkit.LoraConfig(r=4, target_modules=["q_proj"]))
    model.add_adapter("second", peftkit.LoraConfig(r=4, target_modules=["v_proj"]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for name in ("default", "second"):
        with pytest.raises(AdapterNameError, match=name):
            model.add_adapter(name, peftkit.LoraConfig(r=2, target_modules=["k_proj"]))
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize("new_rank", [4, 8], ids=["same-rank", "larger-rank"])
def test_hotswap_equals_a_fresh_load_of_the_new_adapter(tmp_path, new_rank: int) -> None:
    base = build_model("llama")
    source = peftkit.get_peft_model(
        copy.deepcopy(base),
        peftkit.LoraConfig(r=new_rank, lora_alpha=3 * new_rank, target_modules=["q_proj", "v_proj"]),
    )
    randomise_adapter(source, seed=3)
    source.save_pretrained(tmp_path / "new")
    model = peftkit.get_peft_model(copy.deepcopy(base), peftkit.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    randomise_adapter(model, seed=5)
    hotswap_adapter(model, str(tmp_path / "new"), adapter_name="default")
    fresh = peftkit.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "new"))
    inputs = model_inputs("llama")
    torch.testing.assert_close(model_output(model, inputs), model_output(fresh, inputs))
    assert not torch.allclose(model_output(model, inputs), model_output(base, inputs))


@pytest.mark.parametrize("enabled_before", [True, False])
def test_injection_pauses_the_garbage_collector_and_restores_it(enabled_before: bool) -> None:
    """Every module registration during an injection sees the collector off; afterwards (also after a failed
    injection) it is as it was."""
    seen: list[bool] = []

    def record(_module: nn.Module, name: str, _child: nn.Module) -> None:
        if name == "default":  # an adapter's entry in a per-adapter container: inside the injection
            seen.append(gc.isenabled())

    models = [build_model("llama"), build_model("llama")]
    handle = module_hooks.register_module_module_registration_hook(record)
    (gc.enable if enabled_before else gc.disable)()
    try:
        peftkit.get_peft_model(models[0], peftkit.LoraConfig(r=4, target_modules=["q_proj"]))
        assert seen and not any(seen) and gc.isenabled() is enabled_before
        with pytest.raises(TargetingError):  # raised inside the injection: no module is named so
            peftkit.get_peft_model(models[1], peftkit.LoraConfig(r=4, target_modules=["no_such_module"]))
        assert gc.isenabled() is enabled_before
    finally:
        handle.remove()
        gc.enable()


def test_a_second_all_linear_adapter_targets_what_the_reference_targets() -> None:
    """The targets come from the walk that also found the adapters present: the second adapter wraps the first
    one's layers (not their ``lora_A`` / ``lora_B`` insides), with the reference's layout and fresh parameters."""
    models = []
    for library in (peftkit, peft):
        model = library.get_peft_model(build_model("llama"), library.LoraConfig(r=4, target_modules="all-linear"))
        model.add_adapter("second", library.LoraConfig(r=2, target_modules="all-linear"))
        models.append(model)
    kit, ref = models
    assert kit.peft_config["second"].target_modules == ref.peft_config["second"].target_modules
    assert {k: v.shape for k, v in kit.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    factors = [p for n, p in kit.named_parameters() if ".lora_A." in n or ".lora_B." in n]
    assert factors and all(type(p) is nn.Parameter and p.is_leaf for p in factors)


@pytest.mark.parametrize("field", sorted(VARIANT_BUILDERS))
def test_sets_variant_knows_every_variant_field(field: str) -> None:
    """A config that sets any variant field has its finishing walk; one that sets none builds no variant."""
    plain = type("Config", (), dict.fromkeys(VARIANT_BUILDERS))()
    assert not sets_variant(plain) and build_variant(plain, "q_proj", nn.Linear(4, 4)) is None
    setattr(plain, field, object())
    assert sets_variant(plain)
