"""Checks that every config value has a shape peftkit can use, before anything acts on it.

``adapter_config.json`` is user input: a value of the wrong type, a list nested a thousand deep, a rank of
``2**62`` or an invalid regex must become a :class:`~peftkit.errors.ConfigError` that names the field, not a
``TypeError``, ``RecursionError``, ``RuntimeError`` or ``re.error`` from deep inside torch or ``re``.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import re
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal, Union

from peftkit.errors import ConfigError

#: Deepest nesting of lists / dicts accepted in one config value (PEFT's own values are at most 3 deep).
MAX_NESTING = 16
#: Largest size (rank, virtual tokens, hidden width) accepted: 2**20. Larger values cannot be allocated on
#: any current accelerator for a layer of useful width, and near 2**62 torch's size arithmetic overflows.
MAX_SIZE = 2**20


def nesting_depth(value: Any) -> int:
    """How deep lists / tuples / sets / dicts nest in ``value`` (a scalar is 0); iterative, so any depth is safe."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Iterable[Any] = item.values()
        elif isinstance(item, (list, tuple, set, frozenset)):
            children = item
        else:
            continue
        deepest = max(deepest, depth + 1)
        if deepest > MAX_NESTING:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def check_nesting(owner: str, data: Mapping[str, Any]) -> None:
    """Reject any value of ``data`` nested deeper than :data:`MAX_NESTING`, naming its field."""
    for name, value in data.items():
        if nesting_depth(value) > MAX_NESTING:
            raise ConfigError(
                f"{owner}.{name} is nested more than {MAX_NESTING} levels deep; no PEFT field is. Fix the value."
            )


def conforms(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits the type annotation ``hint`` (``int | None``, ``list[str]``, ``Literal[...]``, ...).

    Lists accept tuples and sets (configs turn target lists into sets), floats accept ints, ints reject bools.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin in (Union, types.UnionType):
        return any(conforms(value, arg) for arg in args)
    if origin is Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if origin in (list, tuple, set, frozenset) or hint in (list, tuple, set, frozenset):
        if not isinstance(value, (list, tuple, set, frozenset)):
            return False
        return not args or all(conforms(item, args[0]) for item in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def check_field_types(config: Any) -> None:
    """Check every dataclass field of ``config`` against its annotation.

    Raises:
        ConfigError: naming the first field whose value has the wrong type, with the expected type.
    """
    owner = type(config).__name__
    hints = _type_hints(type(config))  # type: ignore[arg-type]  # classes are hashable; mypy reads __hash__
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in hints and not conforms(value, hints[f.name]):
            expected = _describe(hints[f.name])
            raise ConfigError(f"{owner}.{f.name} must be {expected}, got {_short(value)} ({type(value).__name__}).")


@functools.cache
def _type_hints(cls: Any) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # evaluating the annotations costs more than checking them: once per class


def check_size(owner: str, name: str, value: Any, *, allow_none: bool = False, minimum: int = 1) -> None:
    """Require an integer in ``[minimum, MAX_SIZE]`` (or ``None`` when ``allow_none``)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_SIZE:
        raise ConfigError(f"{owner}.{name} must be an integer from {minimum} to {MAX_SIZE}, got {_short(value)}.")


def check_regex(owner: str, name: str, pattern: Any, template: str = "{}") -> None:
    r"""Compile ``template.format(pattern)`` when ``pattern`` is a string, naming ``name`` if it is invalid.

    ``template`` is how the library uses the pattern (e.g. ``(.*\.)?({})$`` for ``rank_pattern`` keys).
    """
    if not isinstance(pattern, str):
        return
    try:
        re.compile(template.format(pattern))
    except (re.error, RecursionError, OverflowError, ValueError) as exc:
        raise ConfigError(f"{owner}.{name} holds an invalid regular expression {_short(pattern)}: {exc}.") from None


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    if hint is type(None):
        return "None"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "an object"}
    if hint in names:
        return names[hint]
    if origin in (list, tuple, set, frozenset) or hint in (list, tuple, set, frozenset):
        return "a list" + (f" of ({_describe(args[0])})" if args else "")
    if origin is dict:
        return "an object"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in hint)
    return getattr(hint, "__name__", None) or str(hint)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value) if not isinstance(value, (list, dict, tuple, set)) or nesting_depth(value) <= 4 else "<nested>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def name_set(value: Any) -> Any:
    """A list / tuple of module names as a set (PEFT stores target lists as sets); anything else unchanged, for
    :func:`check_field_types` to judge."""
    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        return set(value)
    return value
