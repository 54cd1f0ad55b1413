"""Walking a model's adapter modules (adapter layers and modules_to_save wrappers) without their insides."""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from peftkit.layers.base import AdapterLayer
from peftkit.layers.modules_to_save import ModulesToSaveWrapper
from peftkit.layers.tree_cache import cached_walk

AdapterModule = AdapterLayer | ModulesToSaveWrapper


def walk_model(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``model.named_modules()`` without the insides of adapter layers and modules_to_save wrappers.

    The same pre-order walk (a module reached twice is listed once), but it never descends into an adapter
    layer, whose ~10 internal modules per adapted layer would otherwise dominate every walk, except to list an
    adapter layer nested in it (``<name>.base_layer``: a mixed-method model stacks one layer per method) and the
    layers it placed inside its base module (:meth:`~peftkit.layers.base.AdapterLayer.inner_layers`).

    The list is reused while every walked module's children are the same objects under the same keys
    (:func:`~peftkit.layers.tree_cache.cached_walk`: verified on every call, no hooks).
    """
    return iter(cached_walk(model, _walk))


def _walk(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return list(_walk_modules(model))


def _walk_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    seen: set[int] = set()
    stack: list[tuple[str, nn.Module]] = [("", model)]
    while stack:
        name, module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        yield name, module
        if not isinstance(module, (AdapterLayer, ModulesToSaveWrapper)):  # the usual module: its children
            children = module._modules
            if children:
                prefix = name + "." if name else ""
                stack.extend(reversed([(prefix + key, child) for key, child in children.items() if child is not None]))
            continue
        inner = module._modules.get("base_layer")
        if isinstance(module, AdapterLayer):
            if isinstance(inner, AdapterLayer):
                stack.append((name + ".base_layer", inner))
            stack.extend((f"{name}.{relative}", layer) for relative, layer in reversed(module.inner_layers()))
        if isinstance(inner, AdapterLayer):  # nested layers: one per adapted parameter of a module
            stack.append((f"{name}.base_layer", inner))


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


def all_parameters(model: nn.Module, *, skip_adapter_tensors: bool = False) -> list[nn.Parameter]:
    """Every parameter of ``model`` once (what ``model.parameters()`` yields, in no particular order), from one
    iterative walk.

    ``nn.Module.parameters()`` nests one generator per level of the module tree, and a model with adapters is
    deep (``layers.0.self_attn.q_proj.lora_A.default``): injection and loading walk it more than once.

    Args:
        skip_adapter_tensors: Leave out the containers of adapter tensors (an adapter layer's
            ``adapter_layer_names``, a modules_to_save wrapper's copies): what
            :func:`~peftkit.layers.state.apply_status` sets anyway, so freezing "the rest" need not visit them.
    """
    params: dict[nn.Parameter, None] = {}
    seen = {id(model)}
    stack = [model]
    while stack:
        module = stack.pop()
        for param in module._parameters.values():
            if param is not None:
                params[param] = None
        children = module._modules
        if skip_adapter_tensors and isinstance(module, (AdapterLayer, ModulesToSaveWrapper)):
            skipped = module.adapter_layer_names if isinstance(module, AdapterLayer) else ("modules_to_save",)
            children = {k: c for k, c in children.items() if k not in skipped}
        for child in children.values():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                stack.append(child)
    return list(params)


def switch_to_eval(model: nn.Module) -> None:
    """``model.eval()``, without re-setting the flag of every module when only new ones are in training mode.

    A load for inference ends with the model in eval mode (PEFT calls ``eval()``); usually the model was in eval
    mode already and only the adapter's new modules (created in training mode, as PEFT creates them) are not.
    ``eval()`` would call ``train(False)`` on every module, through ``nn.Module.__setattr__``: over a large
    model that is a visible share of a load. When every module in training mode uses ``nn.Module.train``
    unchanged, only their flags are set (the same end state); otherwise (a module whose class overrides
    ``train``, e.g. a transformers model switching modes) ``model.eval()`` runs as usual.
    """
    training: list[nn.Module] = []
    seen = {id(model)}
    stack = [model]
    while stack:
        module = stack.pop()
        if module.training:
            if type(module).train is not nn.Module.train:
                model.eval()
                return
            training.append(module)
        for child in module._modules.values():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                stack.append(child)
    for module in training:
        module.__dict__["training"] = False
