"""Which modules of a model to adapt: pure functions over module names.

Matching rules (PEFT's):

* a list of names matches a module whose full name equals a name or ends with ``"." + name``;
* a string is a regex that must match the whole module name;
* ``layers_to_transform`` keeps only modules inside the listed layer indices, found through
  ``layers_pattern`` (:func:`layer_index`);
* ``exclude_modules`` uses the same rules and wins over ``target_modules``.
"""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from torch import nn

from peftkit.errors import TargetingError

_V = TypeVar("_V")

ALL_LINEAR = "all-linear"
_MAX_NAMES_IN_ERROR = 40

#: Heads that the task classes add to every config's ``modules_to_save`` (PEFT's ``classifier`` / ``score`` for
#: classification, ``qa_outputs`` for question answering); a model has only some of them, and that is no error.
TASK_HEAD_NAMES = frozenset({"classifier", "score", "qa_outputs"})


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
    r"""The index of the layer that module ``name`` sits inside, or ``None`` (PEFT's rule, first occurrence).

    Without ``layers_pattern`` (``None``, ``""``, ``[]``): the first number that follows a named container after at
    least one name (``model.layers.3.mlp`` -> 3, ``foo.whatever.1.baz`` -> 1; ``layers.3.mlp`` -> ``None``).
    With it: the number after the first ``<pattern>.`` (each a regex, tried in order), e.g. ``layers`` in
    ``model.layers.1.layers.0.up_proj`` -> 1, ``\d+\.layers`` -> 0. The module must lie inside the layer (a
    name ending in the index is the layer itself: ``None``).
    """
    if not layers_pattern:
        match = re.match(r".*?\.[^.]*\.(\d+)\.", name)
        return int(match.group(1)) if match else None
    patterns = [layers_pattern] if isinstance(layers_pattern, str) else list(layers_pattern)
    for pattern in patterns:
        match = re.match(rf"(?:^|.*?\.){pattern}\.(\d+)\.", name)
        if match:
            return int(match.group(1))
    return None


def in_selected_layers(
    name: str, layers_to_transform: int | Collection[int] | None, layers_pattern: str | Collection[str] | None
) -> bool:
    """Whether ``name`` lies in one of ``layers_to_transform`` (always ``True`` when that is ``None`` or empty)."""
    if layers_to_transform is None or (not isinstance(layers_to_transform, int) and not layers_to_transform):
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


def unmatched_pattern_keys(pattern: dict[str, object], names: Collection[str]) -> list[str]:
    """Keys of ``pattern`` (matched as in :func:`pattern_value`) that match none of ``names``."""
    return [key for key in pattern if not any(re.match(rf"(.*\.)?({key})$", name) for name in names)]


def warn_unmatched_patterns(config: object, fields: Collection[str], names: Sequence[str]) -> None:
    """Warn (``RuntimeWarning``, as PEFT) about ``rank_pattern`` / ``alpha_pattern`` keys that match none of the
    adapted modules (a typo there silently leaves the default rank or alpha)."""
    for field_name in fields:
        unmatched = unmatched_pattern_keys(getattr(config, field_name, None) or {}, names)
        if unmatched:
            warnings.warn(
                f"{field_name} keys {unmatched} match none of the adapted modules, so they change nothing; adapted "
                f"modules include {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}.",
                RuntimeWarning,  # PEFT's category for this check
                stacklevel=4,
            )


def check_modules_to_save(wanted: Sequence[str], names: Sequence[str]) -> None:
    """Every name in ``wanted`` must match a module (the task heads that tasks add for every model are exempt).

    Raises:
        TargetingError: naming the modules that match nothing and the model's closest module names.
    """
    missing = [w for w in wanted if w not in TASK_HEAD_NAMES and not any(name_matches(n, [w]) for n in names if n)]
    if not missing:
        return
    candidates = sorted({part for n in names for part in (n, n.rsplit(".", 1)[-1]) if n})
    close = sorted({c for w in missing for c in difflib.get_close_matches(w, candidates, n=5, cutoff=0.5)})
    hint = f" Close names in the model: {', '.join(close)}." if close else ""
    raise TargetingError(
        f"modules_to_save names {', '.join(repr(m) for m in missing)}, which the model does not have.{hint} "
        "Fix modules_to_save."
    )


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
        layers_to_transform: Layer indices to keep; ``layers_pattern`` says how layers are named. A module whose
            full name is itself an entry of a ``target_modules`` list is kept whatever its layer (PEFT's rule: the
            user named that very module).
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
        named = not isinstance(target_modules, str) and name in target_modules  # listed in full: any layer (PEFT)
        if not named and not in_selected_layers(name, layers_to_transform, layers_pattern):
            continue
        if adaptable and not isinstance(module, adaptable):
            if isinstance(target_modules, str):
                continue  # a regex may match containers along the way; only leaves of the right type count
            kinds = ", ".join(sorted({t.__name__ for t in adaptable}))
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


def config_targets(
    candidates: Mapping[str, nn.Module],
    targets: str | Collection[str],
    config: object,
    adaptable: tuple[type, ...],
    pattern_fields: Collection[str] = (),
) -> list[str]:
    """:func:`select_targets` with a config's ``exclude_modules`` / ``layers_to_transform`` / ``layers_pattern``.

    Modules trained in full (``modules_to_save``, and everything in them) get no adapter layer, as in PEFT: their
    copy would carry one too, and the original's would be neither saved nor restored. Keys of ``pattern_fields``
    (``rank_pattern`` ...) that match no chosen module are warned about, and so is an ``exclude_modules`` that
    excludes nothing (unless ``modules_to_save`` keeps some module out, which PEFT counts as an exclusion).
    """
    to_save = getattr(config, "modules_to_save", None) or ()
    exclude = getattr(config, "exclude_modules", None)
    skip = [name for name in candidates if name and to_save and name_matches(name, to_save)]
    names = select_targets(
        candidates.items(),
        targets,
        exclude_modules=exclude,
        layers_to_transform=getattr(config, "layers_to_transform", None),
        layers_pattern=getattr(config, "layers_pattern", None),
        adaptable=adaptable,
        skip=skip,
    )
    if exclude and not skip and not any(name and name_matches(name, exclude) for name in candidates):
        warnings.warn(
            f"exclude_modules={exclude!r} matches no module of the model, so nothing was excluded; check the names "
            "(a list entry matches a full module name or its last dotted parts, a string is a regex).",
            stacklevel=4,
        )
    warn_unmatched_patterns(config, pattern_fields, names)
    return names


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
