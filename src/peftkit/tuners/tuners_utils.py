"""PEFT's ``peft.tuners.tuners_utils`` import path: the base classes every adapter layer and tuner model
derive from, and module targeting.

``BaseTunerLayer`` is :class:`~peftkit.layers.base.AdapterLayer` (every peftkit adapter layer is one, so PEFT's
check "did injection work?" -- ``any(isinstance(m, BaseTunerLayer) for m in model.modules())`` -- holds), and
``BaseTuner`` is :class:`~peftkit.tuner.TunerModel` (``PeftModel.base_model`` of every layer method).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import TypeVar

from torch import nn

from peftkit import adapter_state
from peftkit.config import PeftConfig
from peftkit.errors import UsageError
from peftkit.layers.base import AdapterLayer
from peftkit.layers.modules_to_save import ModulesToSaveWrapper
from peftkit.methods.trainable_tokens.wrapper import TrainableTokensWrapper
from peftkit.targeting import in_selected_layers, name_matches
from peftkit.tuner import TunerModel

BaseTunerLayer = AdapterLayer
BaseTuner = TunerModel

__all__ = ["BaseTuner", "BaseTunerLayer", "check_target_module_exists", "set_requires_grad"]

#: Wrappers that train a module of the base model in full or in part; their state is saved by their own rules,
#: so their insides (even an adapter layer in them) are not the tuner's state (PEFT's auxiliary training wrappers).
_AUXILIARY_WRAPPERS = (ModulesToSaveWrapper, TrainableTokensWrapper)
_V = TypeVar("_V")


def set_requires_grad(model: nn.Module, adapter_names: str | Sequence[str], requires_grad: bool = True) -> None:
    """Let adapters ``adapter_names`` of ``model`` train, or stop them training, active or not."""
    adapter_state.set_requires_grad(model, adapter_names, requires_grad)


def _inside(key: str, module_name: str) -> bool:
    """Whether ``key`` is module ``module_name`` (a dotted suffix of a path) or lies inside it."""
    return f".{module_name}." in f".{key}."


def check_target_module_exists(config: PeftConfig, key: str) -> bool:
    """Whether module ``key`` (its full dotted name) is adapted under ``config``, as injection decides.

    It is when ``target_modules`` selects it (a regex matching the whole name, or a name equal to ``key`` or to
    its last dotted components), neither ``exclude_modules`` nor ``modules_to_save`` covers it, and it lies in
    ``layers_to_transform`` (the layer index read as the reference reads it: :func:`peftkit.targeting.layer_index`)
    -- unless ``key`` itself is an entry of a ``target_modules`` list, which selects it whatever its layer.
    """
    if name_matches(key, getattr(config, "exclude_modules", None)):
        return False
    if any(_inside(key, name) for name in getattr(config, "modules_to_save", None) or ()):
        return False
    targets = getattr(config, "target_modules", None)
    if not name_matches(key, targets):
        return False
    if not isinstance(targets, str) and key in (targets or ()):
        return True
    return in_selected_layers(
        key, getattr(config, "layers_to_transform", None), getattr(config, "layers_pattern", None)
    )


def _is_under(key: str, prefixes: Collection[str]) -> bool:
    """Whether ``key`` equals one of ``prefixes`` or lies below one (dot-separated: ``a.b`` covers ``a.b.c``,
    not ``a.bc``)."""
    return any(key == prefix or key.startswith(prefix + ".") for prefix in prefixes)


def _filter_state_dict_by_key_prefixes(state_dict: Mapping[str, _V], prefixes: Collection[str]) -> dict[str, _V]:
    """The entries of ``state_dict`` whose key equals one of ``prefixes`` or lies below one (see :func:`_is_under`)."""
    return {key: value for key, value in state_dict.items() if _is_under(key, prefixes)}


def _own_attribute_prefixes(module: nn.Module, module_name: str, adapter_name: str | None) -> set[str]:
    """The state-dict prefixes of what ``module`` (an adapter layer or the tuner model) holds besides the wrapped
    module (``base_layer``, ``model``); a per-adapter container is narrowed to ``adapter_name``'s entry when given."""
    names = [n for n, _ in module.named_children()]
    names += [n for n, _ in module.named_parameters(recurse=False)] + [
        n for n, _ in module.named_buffers(recurse=False)
    ]
    prefixes = set()
    for name in names:
        if name in ("base_layer", "model"):
            continue
        prefix = f"{module_name}.{name}" if module_name else name
        child = getattr(module, name)
        if adapter_name is None or not isinstance(child, (nn.ModuleDict, nn.ParameterDict)):
            prefixes.add(prefix)
        elif adapter_name in child:
            prefixes.add(f"{prefix}.{adapter_name}")
    return prefixes


def _get_tuner_state_dict_key_prefixes(model: nn.Module, adapter_name: str | None = None) -> set[str]:
    """Prefixes of the ``model.state_dict()`` keys that belong to the adapter method, found from the structure.

    Everything an adapter layer (or the tuner model) holds belongs to the method except the module it wraps, so a
    base-model module that merely has a name like ``lora_x`` is never taken for adapter state. Modules trained
    by an auxiliary wrapper (``modules_to_save``, trainable tokens) are left out, adapter layers inside them too:
    their state follows their own rules. With ``adapter_name``, per-adapter containers (``ModuleDict``,
    ``ParameterDict``) give only that adapter's entry (``...lin0.lora_A.other``).

    Args:
        model: A ``PeftModel``, a tuner model, or a model with adapters injected in place.
        adapter_name: Narrow the containers to this adapter; ``None`` keeps them whole.

    Returns:
        Dotted key prefixes (use :func:`_filter_state_dict_by_key_prefixes` to select the keys).
    """
    prefixes: set[str] = set()
    auxiliary: list[str] = []
    for name, module in model.named_modules():  # parents come before their children
        name = name.removeprefix("_fsdp_wrapped_module.")
        if isinstance(module, _AUXILIARY_WRAPPERS):
            auxiliary.append(name)
        elif isinstance(module, TunerModel) or (isinstance(module, AdapterLayer) and not _is_under(name, auxiliary)):
            prefixes |= _own_attribute_prefixes(module, name, adapter_name)
    return prefixes


def _find_minimal_target_modules(target_modules: Collection[str], other_module_names: Collection[str]) -> set[str]:
    """The fewest name suffixes that select every name of ``target_modules`` and none of ``other_module_names``.

    A suffix is a trailing run of dotted components (``k_proj``, ``self_attn.k_proj``, the full name); a module is
    selected by a suffix when its name equals it or ends with ``"." + suffix`` (the rule of a ``target_modules``
    list). Targets are visited in a fixed order (by their suffixes, shortest first) and each one not yet selected
    adds its shortest suffix that no other module's name ends with. A target that is itself a suffix of another
    module's name gets none (as in PEFT); when nothing was chosen at all the targets come back unchanged.

    Raises:
        UsageError: (a ``ValueError``) ``target_modules`` is a string or empty, holds ``""``, or shares a name with
            ``other_module_names`` (a module cannot be both targeted and not).
    """
    if isinstance(target_modules, str) or not target_modules:
        raise UsageError(f"target_modules should be a list or set of strings, got {target_modules!r}.")
    targets = set(target_modules)
    if "" in targets:
        raise UsageError("target_modules should not contain an empty string (it would select every module).")
    others = set(other_module_names)
    shared = sorted(targets & others)
    if shared:
        raise UsageError(
            f"target_modules and other_module_names contain common elements ({shared}): a module cannot be both "
            "targeted and not; remove them from one of the two."
        )

    def tails(name: str) -> list[str]:
        parts = name.split(".")
        return [".".join(parts[i:]) for i in range(len(parts) - 1, -1, -1)]

    taken = {tail for name in others for tail in tails(name)}
    chosen: set[str] = set()
    for name, suffixes in sorted(((n, tails(n)) for n in targets), key=lambda pair: pair[1]):
        if any(name == c or name.endswith("." + c) for c in chosen):
            continue
        free = next((tail for tail in suffixes if tail not in taken), None)
        if free is not None:
            chosen.add(free)
    return chosen or targets
