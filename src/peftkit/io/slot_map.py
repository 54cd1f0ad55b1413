"""An adapter's checkpoint key map (:func:`~peftkit.io.state.adapter_tensors`), kept across hot-swaps.

A hot-swap writes new weights into the same tensors every time; the map from on-disk keys to those tensors
costs a walk of the model and Python per tensor. It is kept with a :class:`~peftkit.layers.tree_cache.TreeRecord`
of everything it was read from -- the walked tree, every per-adapter container of every adapter layer (an
adapter added to or deleted from any layer changes one), each tensor's owner module and the modules on the way
to it, each adapted layer's base module -- and is used again only while all of them hold the same objects.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from peftkit.config import PeftConfig
from peftkit.io.state import AdapterTensor, adapter_tensors
from peftkit.layers.base import AdapterLayer
from peftkit.layers.buffer_dict import BufferDict
from peftkit.layers.tree_cache import TreeRecord, recall, remember
from peftkit.layers.walk import AdapterModule, iter_adapter_modules
from peftkit.methods.spec import method_of

#: Where each kind of per-adapter container keeps its entries (by adapter name).
_ENTRIES = {nn.ModuleDict: "_modules", nn.ParameterDict: "_parameters", BufferDict: "_buffers"}


class SlotMap(NamedTuple):
    """The adapter modules of a model (walk order) and one adapter's checkpoint tensors, keyed as on disk."""

    modules: list[tuple[str, AdapterModule]]
    tensors: dict[str, AdapterTensor]


def slot_map(model: nn.Module, adapter: str, config: PeftConfig) -> SlotMap:
    """``(adapter modules, adapter_tensors(model, adapter, config))``, reused while nothing it depends on changed.

    The tensors are the live ``Parameter`` / buffer objects (write them under ``torch.no_grad()``). A map that
    cannot be verified by its record (``bias="all"``, which reads every bias of the model; tensors held once per
    model; a modules_to_save copy; a module with state-dict hooks) is built afresh every time.
    """
    spec = method_of(config)
    key = ("slot_map", adapter, config.peft_type, spec.bias_rule(config))
    found = recall(model, key)
    if found is not None:
        return found
    modules = list(iter_adapter_modules(model))
    tensors = adapter_tensors(model, adapter, config, None, modules)
    if spec.bias_rule(config) == "all" or spec.model_tensors is not None:
        return SlotMap(modules, tensors)
    record = TreeRecord()
    record.assume([model, *(module for _, module in modules)])  # the walk's own record covers their children
    if not _record_containers(
        record, modules, adapter, spec.bias_rule(config) == "adapter_layers" or _has_embedding(tensors)
    ):
        return SlotMap(modules, tensors)
    live = _live_tensors(model, tensors, record)
    if live is None:
        return SlotMap(modules, tensors)
    found = SlotMap(modules, live)
    remember(model, key, record, found)
    return found


def _record_containers(
    record: TreeRecord, modules: list[tuple[str, AdapterModule]], adapter: str, base_tensors: bool
) -> bool:
    """Record, for every adapter layer, each per-adapter container's entry for ``adapter`` (present or not: an
    adapter added to or deleted from any layer changes one) and, with ``base_tensors`` (a map that holds base
    biases or embedding weights), its base module's tensors. ``False`` when there is something a record cannot
    cover (a modules_to_save wrapper, a container that is not a module)."""
    for _, module in modules:
        if not isinstance(module, AdapterLayer):
            return False
        children = module._modules
        for attr in module.adapter_layer_names:
            container = children.get(attr)
            if container is None and attr in module.__dict__:
                return False
            if container is None:
                continue
            kind = _ENTRIES.get(type(container))
            if kind is None:
                return False
            record.add_entry(container, kind, adapter)
            record.assume([container])
        if base_tensors:
            record.add_tensors(module.get_base_layer())
    return True


def _has_embedding(tensors: dict[str, AdapterTensor]) -> bool:
    return any(key.endswith(".base_layer.weight") for key in tensors)


def _live_tensors(
    model: nn.Module, tensors: dict[str, AdapterTensor], record: TreeRecord
) -> dict[str, AdapterTensor] | None:
    """``tensors`` with each value's tensor replaced by the live object its ``source`` names, every module on the
    way recorded; ``None`` when one has no source or its owner has state-dict hooks (keys of its own making)."""
    live = {}
    for key, entry in tensors.items():
        if not entry.source:
            return None
        *path, name = entry.source.split(".")
        owner = model
        for part in path:
            record.add_children(owner)
            child = owner._modules.get(part)
            if child is None:
                return None
            owner = child
        tensor: torch.Tensor | None = owner._parameters.get(name)
        tensor = owner._buffers.get(name) if tensor is None else tensor
        if tensor is None or owner._state_dict_hooks or owner._state_dict_pre_hooks:
            return None
        record.add_tensors(owner, plain=True)
        live[key] = entry._replace(tensor=tensor)
    return live
