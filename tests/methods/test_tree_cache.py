"""The walks and hot-swap key maps kept across operations (``peftkit.layers.tree_cache``) are never stale.

Each test first runs the operation once, so that the walk and the slot's key map are cached, then changes the
model the way users do -- a module replaced by ``setattr`` or by a direct ``_modules[...] =`` (which torch's
registration hooks do not see), a parameter replaced by a direct ``_parameters[...] =``, a new adapter layer, an
adapted layer removed, an adapter deleted and loaded again, the dtype changed -- the same way in peftkit and in
the reference peft, and checks that a hot-swap and a load give the reference's outputs, and a deep copy's (which
has no cache). A cache that skipped its check would write into modules no longer in the model, or miss a new one.
"""

from __future__ import annotations

import copy
import gc
import shutil
import weakref
from collections.abc import Callable

import peft
import peft.utils.hotswap
import pytest
import torch
from safetensors.torch import load_file
from tests._tiny import build_model, model_inputs, model_output, randomise_adapter
from torch import nn

import peftkit
from peftkit.errors import HotswapError
from peftkit.hotswap import hotswap_adapter, swap_adapter_weights
from peftkit.layers.tree_cache import TreeRecord
from peftkit.layers.walk import _walk_modules, walk_model

TARGETS = ["q_proj", "v_proj"]


def _attention(model: nn.Module) -> nn.Module:
    return model.model.layers[0].self_attn


def _copy_layer_by_setattr(model: nn.Module) -> None:
    attn = _attention(model)
    attn.q_proj = copy.deepcopy(attn.q_proj)


def _copy_layer_in_modules(model: nn.Module) -> None:
    attn = _attention(model)
    attn._modules["v_proj"] = copy.deepcopy(attn._modules["v_proj"])


def _copy_factor_in_container(model: nn.Module) -> None:
    factors = _attention(model).q_proj.lora_A
    factors._modules["default"] = copy.deepcopy(factors._modules["default"])


def _replace_parameter(model: nn.Module) -> None:
    factor = _attention(model).v_proj.lora_B["default"]
    factor._parameters["weight"] = nn.Parameter(factor.weight.detach().clone())


def _add_adapted_layer(model: nn.Module) -> None:
    attn = _attention(model)  # o_proj has q_proj's shape: a copy of the adapted q_proj, holding "default"
    attn._modules["o_proj"] = copy.deepcopy(attn.q_proj)


def _to_float64(model: nn.Module) -> None:
    model.to(torch.float64)


MUTATIONS: dict[str, Callable[[nn.Module], None]] = {
    "setattr": _copy_layer_by_setattr,
    "modules_dict": _copy_layer_in_modules,
    "container_entry": _copy_factor_in_container,
    "parameters_dict": _replace_parameter,
    "new_layer": _add_adapted_layer,
    "dtype": _to_float64,
}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two saved LoRA adapters ("a", "b") of the same config with different weights, written by peft."""
    root = tmp_path_factory.mktemp("adapters")
    out = {}
    for seed, name in enumerate(["a", "b"]):
        model = peft.get_peft_model(build_model("llama"), peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))
        randomise_adapter(model, seed=10 + seed)
        model.save_pretrained(root / name)
        out[name] = str(root / name)
    return out


def _pair(adapters: dict[str, str]) -> tuple[nn.Module, nn.Module]:
    kit = peftkit.PeftModel.from_pretrained(build_model("llama"), adapters["a"])
    ref = peft.PeftModel.from_pretrained(build_model("llama"), adapters["a"])
    return kit, ref


def _swap_both(kit: nn.Module, ref: nn.Module, path: str, adapter: str = "default") -> None:
    hotswap_adapter(kit, path, adapter_name=adapter)
    peft.utils.hotswap.hotswap_adapter(ref, path, adapter_name=adapter)


def _assert_same(kit: nn.Module, ref: nn.Module) -> None:
    inputs = model_inputs("llama")
    torch.testing.assert_close(model_output(kit, inputs), model_output(ref, inputs))


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_hotswap_after_a_change_of_the_model_equals_peft_and_a_fresh_copy(adapters, mutation: str) -> None:
    kit, ref = _pair(adapters)
    _swap_both(kit, ref, adapters["b"])  # caches the walk and the slot's key map
    _swap_both(kit, ref, adapters["a"])  # uses them
    for model in (kit.get_base_model(), ref.get_base_model()):
        MUTATIONS[mutation](model)
    fresh = copy.deepcopy(kit)  # a new root: nothing cached for it
    _swap_both(kit, ref, adapters["b"])
    hotswap_adapter(fresh, adapters["b"], adapter_name="default")
    _assert_same(kit, ref)
    _assert_same(kit, fresh)


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_load_after_a_change_of_the_model_equals_peft(adapters, mutation: str) -> None:
    kit, ref = _pair(adapters)
    for model in (kit, ref):
        model.load_adapter(adapters["b"], adapter_name="other")
        model.delete_adapter("other")
        MUTATIONS[mutation](model.get_base_model())
        model.load_adapter(adapters["b"], adapter_name="other")
        model.set_adapter("other")
    _assert_same(kit, ref)


def test_hotswap_after_delete_and_reload_writes_the_new_modules(adapters) -> None:
    kit, ref = _pair(adapters)
    for model in (kit, ref):
        model.load_adapter(adapters["a"], adapter_name="other")
        model.set_adapter("other")
    _swap_both(kit, ref, adapters["b"], "other")
    for model in (kit, ref):
        model.set_adapter("default")
        model.delete_adapter("other")
        model.load_adapter(adapters["a"], adapter_name="other")
        model.set_adapter("other")
    _swap_both(kit, ref, adapters["b"], "other")
    _assert_same(kit, ref)


def test_hotswap_refuses_once_an_adapted_layer_was_removed(adapters) -> None:
    """The file has weights for a layer the model no longer adapts: refused, as without a cache; the removed layer
    (no longer in the model) is not written."""
    kit, _ = _pair(adapters)
    hotswap_adapter(kit, adapters["b"], adapter_name="default")
    attn = _attention(kit.get_base_model())
    removed = attn.q_proj
    before = removed.lora_A["default"].weight.detach().clone()
    attn.q_proj = removed.base_layer
    with pytest.raises(HotswapError, match="q_proj"):
        hotswap_adapter(kit, adapters["a"], adapter_name="default")
    torch.testing.assert_close(removed.lora_A["default"].weight, before)


def _removed_child(model: nn.Module) -> None:
    del _attention(model)._modules["k_proj"]


def _added_child(model: nn.Module) -> None:
    _attention(model).extra = nn.Linear(2, 2)


def _renamed_child(model: nn.Module) -> None:
    mlp = model.model.layers[0].mlp
    mlp._modules["gate"] = mlp._modules.pop("gate_proj")


@pytest.mark.parametrize(
    "change", [_copy_layer_by_setattr, _copy_layer_in_modules, _removed_child, _added_child, _renamed_child]
)
def test_walk_after_a_change_lists_what_a_fresh_walk_lists(adapters, change: Callable[[nn.Module], None]) -> None:
    kit, _ = _pair(adapters)
    inner = kit.get_base_model()
    list(walk_model(inner))  # cached
    change(inner)
    walked = [(name, id(module)) for name, module in walk_model(inner)]
    assert walked == [(name, id(module)) for name, module in _walk_modules(inner)]


def test_the_cache_keeps_no_model_alive(adapters) -> None:
    kit, _ = _pair(adapters)
    hotswap_adapter(kit, adapters["b"], adapter_name="default")
    list(walk_model(kit))
    alive = weakref.ref(kit.get_base_model())
    del kit
    gc.collect()
    assert alive() is None


def test_hotswap_rereads_a_config_that_changed_on_disk(adapters, tmp_path) -> None:
    """A swap parses each adapter_config.json content once; a file rewritten in place (another alpha and rank) is
    parsed again: the swap equals peft's."""
    kit, ref = _pair(adapters)
    path = tmp_path / "changing"
    shutil.copytree(adapters["b"], path)
    _swap_both(kit, ref, str(path))
    other = peft.get_peft_model(build_model("llama"), peft.LoraConfig(r=2, lora_alpha=7, target_modules=TARGETS))
    randomise_adapter(other, seed=30)
    shutil.rmtree(path)
    other.save_pretrained(path)
    _swap_both(kit, ref, str(path))
    _assert_same(kit, ref)


def test_swap_with_a_config_object_changed_between_calls_uses_the_change(adapters) -> None:
    """``swap_adapter_weights`` with the caller's config: its layer facts are never kept, so a config object changed
    after a swap (another alpha) scales the next swap by the new alpha, as a fresh copy does."""
    kit, _ = _pair(adapters)
    config = peftkit.PeftConfig.from_pretrained(adapters["b"])
    state = load_file(f"{adapters['b']}/adapter_model.safetensors")
    swap_adapter_weights(kit, "default", config, state)
    config.lora_alpha = 3 * config.lora_alpha
    fresh = copy.deepcopy(kit)
    swap_adapter_weights(kit, "default", config, state)
    swap_adapter_weights(fresh, "default", config, state)
    inputs = model_inputs("llama")
    torch.testing.assert_close(model_output(kit, inputs), model_output(fresh, inputs))
    once = copy.deepcopy(config)
    once.lora_alpha = config.lora_alpha // 3
    swap_adapter_weights(fresh, "default", once, state)
    assert not torch.allclose(model_output(kit, inputs), model_output(fresh, inputs))


class _EqualToAll(nn.Module):
    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = nn.Module.__hash__


def test_a_record_compares_by_identity_never_by_value() -> None:
    """An equal-valued one-element parameter, or a child whose class says every instance is equal, replacing the
    recorded one, fails the check."""
    owner = nn.Module()
    owner.scale = nn.Parameter(torch.ones(1))
    owner.child = _EqualToAll()
    record = TreeRecord()
    record.add_tensors(owner)
    assert record.intact()
    owner._parameters["scale"] = nn.Parameter(torch.ones(1))
    assert not record.intact()
    record = TreeRecord()
    record.add_tensors(owner)
    owner._modules["child"] = _EqualToAll()
    assert not record.intact()


def test_a_tree_that_reaches_its_root_again_is_walked_afresh() -> None:
    """A module tree with a cycle back to its root is not cached (the cache would keep the root alive): it is
    walked afresh, and a change is seen."""
    root = nn.Sequential(nn.Linear(2, 2))
    root[0].back = root
    assert [name for name, _ in walk_model(root)] == ["", "0"]
    root.append(nn.ReLU())
    assert [name for name, _ in walk_model(root)] == ["", "0", "1"]
    alive = weakref.ref(root)
    del root
    gc.collect()
    assert alive() is None


def test_a_deleted_adapter_is_not_kept_alive_by_a_kept_key_map(adapters) -> None:
    kit, _ = _pair(adapters)
    kit.load_adapter(adapters["a"], adapter_name="other")
    hotswap_adapter(kit, adapters["b"], adapter_name="other")  # keeps the slot's key map: its tensors
    factor = weakref.ref(_attention(kit.get_base_model()).q_proj.lora_A["other"].weight)
    kit.delete_adapter("other")
    gc.collect()
    assert factor() is None
