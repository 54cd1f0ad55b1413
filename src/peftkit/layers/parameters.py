"""Adapting parameters instead of modules (a config's ``target_parameters``, PEFT's rule).

A key ``"<module name>.<parameter name>"`` (the module that holds the parameter directly, adapter wrappers'
``.base_layer`` links removed) is targeted when it equals an entry of ``target_parameters`` or ends with
``"." + entry``. The module is replaced by the method's parameter layer; a second targeted parameter of the same
module wraps that layer again (the parameters in the module's registration order, the first innermost). A
parameter that an earlier adapter already wraps gets the new adapter in its existing wrapper.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from torch import nn

from peftkit.errors import TargetingError, UnsupportedError
from peftkit.layers.base import AdapterLayer
from peftkit.layers.modules_to_save import ModulesToSaveWrapper
from peftkit.layers.wrap import replace_module

if TYPE_CHECKING:
    from peftkit.methods.spec import MethodSpec


def _plain_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the model's own modules, names as in the plain model: through an adapter layer only
    along ``base_layer`` (never into its adapter tensors), never into a modules_to_save wrapper."""
    out: list[tuple[str, nn.Module]] = []
    stack: list[tuple[str, nn.Module]] = [("", model)]
    while stack:
        name, module = stack.pop()
        if isinstance(module, AdapterLayer):
            stack.append((name, module.base_layer))
            continue
        if isinstance(module, ModulesToSaveWrapper):
            continue
        out.append((name, module))
        prefix = name + "." if name else ""
        stack.extend(reversed([(prefix + k, c) for k, c in module._modules.items() if c is not None]))
    return out


def parameter_targets(model: nn.Module, target_parameters: Sequence[str]) -> list[tuple[str, str]]:
    """``(module name, parameter name)`` of every targeted parameter, in model order (module names without
    wrapper links; each module's parameters in registration order).

    Raises:
        TargetingError: nothing matches (the message lists the model's parameter names), or a targeted parameter
            sits on the top-level model itself.
        UnsupportedError: a targeted parameter is computed by a torch parametrization.
    """
    wanted = set(target_parameters)
    found: list[tuple[str, str]] = []
    seen: set[str] = set()
    for plain, module in _plain_modules(model):
        _refuse_parametrized(plain, module, wanted)
        for param_name, _ in module.named_parameters(recurse=False):
            key = f"{plain}.{param_name}" if plain else param_name
            if key in seen or not (key in wanted or any(key.endswith("." + w) for w in wanted)):
                continue
            if not plain:
                raise TargetingError(
                    f"target_parameters: {param_name!r} is on the top-level model; target a submodule's."
                )
            seen.add(key)
            found.append((plain, param_name))
    if not found:
        names = [n for n, _ in model.named_parameters() if ".lora_" not in n][:40]
        raise TargetingError(
            f"target_parameters={sorted(wanted)} matched no parameter of the model; its parameters include: "
            f"{', '.join(names)}."
        )
    unmatched = sorted(w for w in wanted if not any(f"{m}.{p}" == w or f"{m}.{p}".endswith("." + w) for m, p in found))
    if unmatched:
        warnings.warn(f"target_parameters {unmatched} matched no parameter of the model.", UserWarning, stacklevel=4)
    return found


def _refuse_parametrized(plain: str, module: nn.Module, wanted: set[str]) -> None:
    """A targeted parameter that a ``torch.nn.utils.parametrize`` parametrization computes is not supported."""
    for name in getattr(getattr(module, "parametrizations", None), "_modules", {}):
        key = f"{plain}.{name}" if plain else name
        if key in wanted or any(key.endswith("." + w) for w in wanted):
            raise UnsupportedError(
                f"target_parameters: {key} is computed by a torch parametrization (parametrize."
                "register_parametrization), which peftkit's parameter LoRA does not support; remove the "
                "parametrization or target another parameter."
            )


def _existing_wrapper(module: nn.Module, parameter_name: str) -> AdapterLayer | None:
    while isinstance(module, AdapterLayer) and hasattr(module, "parameter_name"):
        if module.parameter_name == parameter_name:
            return module
        module = module.base_layer
    return None


def inject_parameters(
    model: nn.Module,
    targets: Sequence[tuple[str, str]],
    make_layer: Callable[[nn.Module, str], AdapterLayer],
    add_adapter: Callable[[AdapterLayer, str], None],
    created: list[tuple[str, nn.Module]],
    updated: list[Any],
) -> list[str]:
    """Give every target of :func:`parameter_targets` the adapter; returns the targeted keys.

    Args:
        make_layer: ``(module, parameter name) -> layer`` (a new parameter layer around ``module``).
        add_adapter: ``(layer, key) -> None`` adds the adapter to a layer (new or existing).
        created, updated: The injection record's lists (``(name, previous module)`` replaced; layers updated),
            so that a failed injection can be undone.

    Raises:
        TargetingError: a targeted module is also wrapped by another adapter layer (e.g. through
            ``target_modules``).
    """
    keys = []
    for module_name, param_name in targets:
        current = model.get_submodule(module_name)
        if isinstance(current, AdapterLayer) and not hasattr(current, "parameter_name"):
            raise TargetingError(
                f"Cannot adapt parameter {param_name!r} of {module_name!r}: the module is already an adapter layer "
                f"({type(current).__name__}); do not target it with target_modules as well (e.g. target_modules=[])."
            )
        key = f"{module_name}.{param_name}"
        existing = _existing_wrapper(current, param_name)
        if existing is not None:
            add_adapter(existing, key)
            updated.append(existing)
        else:
            layer = make_layer(current, param_name)
            add_adapter(layer, key)
            created.append((module_name, replace_module(model, module_name, layer)))
        keys.append(key)
    return keys


def inject_config_parameters(
    model: nn.Module,
    config: Any,
    spec: MethodSpec,
    adapter: str,
    init: bool,
    created: list[tuple[str, nn.Module]],
    updated: list[Any],
) -> list[str]:
    """Adapt ``config.target_parameters`` (if any) with the method's ``parameter_layer``; ``created`` and
    ``updated`` are the injection record's lists (see :func:`inject_parameters`). Returns the adapted
    ``module.parameter`` names, in model order.

    Raises:
        UnsupportedError: the method adapts modules only. TargetingError: see :func:`parameter_targets` and
            :func:`inject_parameters`.
    """
    wanted = getattr(config, "target_parameters", None)
    if not wanted:
        return []
    layer_class: Any = spec.parameter_layer
    if layer_class is None:
        raise UnsupportedError(f"{config.peft_type} cannot adapt parameters; leave target_parameters unset.")
    facts: Any = spec.layer_facts

    def make(module: nn.Module, name: str) -> AdapterLayer:
        return layer_class(module, parameter_name=name)

    def add(layer: Any, key: str) -> None:
        layer.update_layer(adapter, facts(config, key, layer.get_base_layer()), init)

    return inject_parameters(model, parameter_targets(model, wanted), make, add, created, updated)
