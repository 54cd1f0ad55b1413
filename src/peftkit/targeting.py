"""Which modules of a model to adapt: pure functions over module names.

Matching rules (PEFT's):

* a list of names matches a module whose full name equals a name or ends with ``"." + name``;
* a string is a regex that must match the whole module name;
* ``layers_to_transform`` keeps only modules inside the listed layer indices, found through
  ``layers_pattern`` (default: ``layers``, ``h``, ``block``, ``blocks``, ``layer``);
* ``exclude_modules`` uses the same rules and wins over ``target_modules``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any, TypeVar

from torch import nn

from peftkit.errors import TargetingError

_V = TypeVar("_V")

ALL_LINEAR = "all-linear"
DEFAULT_LAYER_PATTERNS = ("layers", "h", "block", "blocks", "layer")
_MAX_NAMES_IN_ERROR = 40


def name_matches(name: str, targets: str | Collection[str] | None) -> bool:
    """Whether module ``name`` is selected by ``targets`` (a regex string or a collection of names)."""
    if targets is None:
        return False
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    if name in targets:
        return True
    # ``name`` ends with ``"." + t`` for some target ``t``: look its dotted suffixes up instead of testing
    # every target (the expansion of ``all-linear`` holds every linear layer's full name).
    dot = name.find(".")
    while dot != -1:
        if name[dot + 1 :] in targets:
            return True
        dot = name.find(".", dot + 1)
    return False


def layer_index(name: str, layers_pattern: str | Collection[str] | None = None) -> int | None:
    """The layer index in ``name`` (``model.layers.3.mlp`` -> 3), or ``None`` if it has none."""
    patterns = [layers_pattern] if isinstance(layers_pattern, str) else list(layers_pattern or DEFAULT_LAYER_PATTERNS)
    for pattern in patterns:
        match = re.match(rf"(?:.*\.)?{re.escape(pattern)}\.(\d+)(?:\.|$)", name)
        if match:
            return int(match.group(1))
    return None


def in_selected_layers(
    name: str, layers_to_transform: int | Collection[int] | None, layers_pattern: str | Collection[str] | None
) -> bool:
    """Whether ``name`` lies in one of ``layers_to_transform`` (always ``True`` when that is ``None``)."""
    if layers_to_transform is None:
        return True
    wanted = {layers_to_transform} if isinstance(layers_to_transform, int) else set(layers_to_transform)
    index = layer_index(name, layers_pattern)
    return index is not None and index in wanted


def pattern_value(name: str, pattern: Mapping[str, _V], default: _V) -> _V:
    r"""First value of ``pattern`` whose regex key matches ``name`` as ``(.*\.)?(key)$``; else ``default``."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def select_targets(
    names_and_modules: Iterable[tuple[str, nn.Module]],
    target_modules: str | Collection[str],
    *,
    exclude_modules: str | Collection[str] | None = None,
    layers_to_transform: int | Collection[int] | None = None,
    layers_pattern: str | Collection[str] | None = None,
    adaptable: tuple[type, ...] = (),
    skip: Collection[str] = (),
) -> list[str]:
    """Full names of the modules to adapt, in model order.

    Args:
        names_and_modules: ``model.named_modules()``.
        target_modules: Names or a regex (``"all-linear"`` must be expanded first).
        exclude_modules: Names or a regex never adapted.
        layers_to_transform: Layer indices to keep; ``layers_pattern`` says how layers are named.
        adaptable: Module types the method can wrap; a matched module of another type is an error.
        skip: Name prefixes that are never descended into (e.g. modules_to_save copies).

    Raises:
        TargetingError: a matched module has a type the method cannot adapt, or nothing matched (the
            message lists the model's module names).
    """
    pairs = list(names_and_modules)
    chosen: list[str] = []
    for name, module in pairs:
        if not name or any(name == s or name.startswith(s + ".") for s in skip):
            continue
        if not name_matches(name, target_modules) or name_matches(name, exclude_modules):
            continue
        if not in_selected_layers(name, layers_to_transform, layers_pattern):
            continue
        if adaptable and not isinstance(module, adaptable):
            if isinstance(target_modules, str):
                continue  # a regex may match containers along the way; only leaves of the right type count
            kinds = ", ".join(sorted(t.__name__ for t in adaptable))
            raise TargetingError(
                f"Target module {name!r} is a {type(module).__name__}, which this method cannot adapt "
                f"(supported: {kinds}); choose other target_modules."
            )
        chosen.append(name)
    if not chosen:
        names = [n for n, _ in pairs if n]
        shown = ", ".join(names[:_MAX_NAMES_IN_ERROR]) + (" ..." if len(names) > _MAX_NAMES_IN_ERROR else "")
        raise TargetingError(
            f"Target modules {_describe(target_modules)} not found in the base model"
            + (f" (layers_to_transform={layers_to_transform!r})" if layers_to_transform is not None else "")
            + f". The model's modules are: {shown}. Set target_modules to some of these names."
        )
    return chosen


def all_linear_names(
    model: nn.Module,
    linear_types: tuple[type, ...],
    candidates: Iterable[tuple[str, nn.Module]] | None = None,
) -> set[str]:
    """Every Linear-like module's full name except the output head (``get_output_embeddings``).

    Args:
        candidates: ``(name, module)`` pairs to consider instead of ``model.named_modules()``; on a model that
            already carries adapters, pass its modules with each adapter layer standing for its base layer.
    """
    head: Any = getattr(model, "get_output_embeddings", lambda: None)()
    head = head.get_base_layer() if hasattr(head, "get_base_layer") else head
    pairs = model.named_modules() if candidates is None else candidates
    names = {name for name, module in pairs if isinstance(module, linear_types) and module is not head}
    if not names:
        raise TargetingError("target_modules='all-linear' found no Linear layer in the model.")
    return names


def _describe(targets: str | Collection[str]) -> str:
    return repr(targets) if isinstance(targets, str) else "{" + ", ".join(repr(t) for t in sorted(targets)) + "}"
