"""PEFT's LoRA sub-configs (``KasaConfig``, ``MontecloraConfig``...): a ``LoraConfig`` field holds one, a dict of
its fields (as read from ``adapter_config.json``), or ``None``."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, TypeVar

from peftkit.errors import ArgumentTypeError

_C = TypeVar("_C")


def as_subconfig(cls: type[_C], field_name: str, value: Any) -> _C | None:
    """``value`` of ``LoraConfig.<field_name>`` as a ``cls``: kept, built from a dict, or ``None``.

    A dict is what ``adapter_config.json`` holds: fields the dataclass computes itself (``init=False``) are set
    after construction, and keys ``cls`` does not know (written by a newer version) are dropped with a warning,
    as PEFT drops them.

    Raises:
        ArgumentTypeError: ``value`` is neither a ``cls``, a dict nor ``None``.
        ConfigError: ``cls`` refuses one of the values.
    """
    if value is None or isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ArgumentTypeError(
            f"LoraConfig.{field_name} takes a {cls.__name__}, a dict of its fields or None; got {type(value).__name__}."
        )
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]  # every sub-config is a dataclass
    unknown = sorted(set(value) - {f.name for f in fields})
    if unknown:
        warnings.warn(f"LoraConfig.{field_name}: unknown keys {unknown} were dropped.", stacklevel=4)
    config = cls(**{f.name: value[f.name] for f in fields if f.init and f.name in value})
    for f in fields:  # what the dataclass computes but a file recorded (Arrow's expert names): as recorded
        if not f.init and f.name in value:
            setattr(config, f.name, value[f.name])
    return config
