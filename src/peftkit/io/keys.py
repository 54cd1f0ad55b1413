"""Pure key mapping between in-memory state-dict keys and PEFT's on-disk keys.

In memory an adapter's parameters sit under its name (``q_proj.lora_A.default.weight``); on disk the name
is gone (``q_proj.lora_A.weight``) and layer methods carry the ``base_model.model.`` prefix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

_T = TypeVar("_T")

#: The prefix PEFT's ``PeftModel`` puts in front of the wrapped model's keys.
MODEL_PREFIX = "base_model.model."


def remove_adapter_name(key: str, adapter: str) -> str:
    """Drop the adapter name: a trailing ``.<adapter>`` goes, else the ``.<adapter>`` before the last segment.

    >>> remove_adapter_name("m.q.lora_A.default.weight", "default")
    'm.q.lora_A.weight'
    >>> remove_adapter_name("m.emb.lora_embedding_A.default", "default")
    'm.emb.lora_embedding_A'
    """
    suffix = "." + adapter
    if key.endswith(suffix):
        return key[: -len(suffix)]
    head, dot, last = key.rpartition(".")
    if dot and head.endswith(suffix):
        return head[: -len(suffix)] + "." + last
    return key


def insert_adapter_name(key: str, adapter: str, containers: tuple[str, ...]) -> str:
    """Inverse of :func:`remove_adapter_name`: put ``adapter`` after the last segment named in ``containers``.

    >>> insert_adapter_name("m.q.lora_A.weight", "x", ("lora_A",))
    'm.q.lora_A.x.weight'
    """
    parts = key.split(".")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] in containers:
            return ".".join([*parts[: i + 1], adapter, *parts[i + 1 :]])
    return key


def rename_suffix(key: str, renames: Mapping[str, str]) -> str:
    """Apply the first matching ``{old_suffix: new_suffix}`` rename (method quirks such as DoRA's magnitude)."""
    for old, new in renames.items():
        if key.endswith(old):
            return key[: -len(old)] + new
    return key


def add_prefix(state: Mapping[str, _T], prefix: str = MODEL_PREFIX) -> dict[str, _T]:
    """Prefix every key."""
    return {prefix + k: v for k, v in state.items()}


def strip_prefix(key: str, prefix: str = MODEL_PREFIX) -> str:
    """Remove ``prefix`` from ``key`` when present."""
    return key[len(prefix) :] if key.startswith(prefix) else key
