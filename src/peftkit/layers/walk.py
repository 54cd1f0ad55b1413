"""Walking a model's adapter modules (adapter layers and modules_to_save wrappers) without their insides."""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from peftkit.layers.base import AdapterLayer
from peftkit.layers.modules_to_save import ModulesToSaveWrapper

AdapterModule = AdapterLayer | ModulesToSaveWrapper


def walk_model(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``model.named_modules()`` without the insides of adapter layers and modules_to_save wrappers.

    The same pre-order walk (a module reached twice is listed once), but it never descends into an adapter
    layer, whose ~10 internal modules per adapted layer would otherwise dominate every walk, except to list an
    adapter layer nested in it (``<name>.base_layer``: a mixed-method model stacks one layer per method) and the
    layers it placed inside its base module (:meth:`~peftkit.layers.base.AdapterLayer.inner_layers`).
    """
    seen: set[int] = set()
    stack: list[tuple[str, nn.Module]] = [("", model)]
    while stack:
        name, module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        yield name, module
        if isinstance(module, AdapterLayer) and isinstance(module.base_layer, AdapterLayer):
            stack.append((name + ".base_layer", module.base_layer))
        if isinstance(module, AdapterLayer):
            stack.extend((f"{name}.{relative}", inner) for relative, inner in reversed(module.inner_layers()))
        if isinstance(module, (AdapterLayer, ModulesToSaveWrapper)):
            inner = module._modules.get("base_layer")
            if isinstance(inner, AdapterLayer):  # nested layers: one per adapted parameter of a module
                stack.append((f"{name}.base_layer", inner))
            continue
        prefix = name + "." if name else ""
        children = [(prefix + key, child) for key, child in module._modules.items() if child is not None]
        stack.extend(reversed(children))


def is_nested(name: str, module: nn.Module) -> bool:
    """Whether ``module`` (listed by :func:`walk_model` as ``name``) is an adapter layer inside another one."""
    return isinstance(module, AdapterLayer) and (module.is_inner_layer or name.rpartition(".")[2] == "base_layer")


def iter_adapter_modules(model: nn.Module) -> Iterator[tuple[str, AdapterModule]]:
    """``(name, module)`` for every adapter layer and modules_to_save wrapper (nested layers of a mixed-method
    model too, after the layer that holds them)."""
    for name, module in walk_model(model):
        if isinstance(module, (AdapterLayer, ModulesToSaveWrapper)):
            yield name, module


def adapter_names_in(model: nn.Module) -> set[str]:
    """Every adapter name present in any layer or wrapper of ``model``."""
    names: set[str] = set()
    for _, module in iter_adapter_modules(model):
        names |= module.adapter_names()
    return names
