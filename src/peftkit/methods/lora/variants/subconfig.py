"""PEFT's LoRA sub-configs (``KasaConfig``, ``MontecloraConfig``...): a ``LoraConfig`` field holds one, a dict of
its fields (as read from ``adapter_config.json``), or ``None``."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from peftkit.errors import ArgumentTypeError, ConfigError

_C = TypeVar("_C")


def as_subconfig(cls: type[_C], field_name: str, value: Any) -> _C | None:
    """``value`` of ``LoraConfig.<field_name>`` as a ``cls``: kept, built from a dict, or ``None``.

    Raises:
        ArgumentTypeError: ``value`` is neither a ``cls``, a dict nor ``None``.
        ConfigError: the dict holds keys ``cls`` does not have (or ``cls`` refuses its values).
    """
    if value is None or isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ArgumentTypeError(
            f"LoraConfig.{field_name} takes a {cls.__name__}, a dict of its fields or None; got {type(value).__name__}."
        )
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]  # every sub-config is a dataclass
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(f"LoraConfig.{field_name} has unknown keys {unknown}; {cls.__name__} has {sorted(known)}.")
    return cls(**value)
