"""Pure key mapping between in-memory state-dict keys and PEFT's on-disk keys.

In memory an adapter's parameters sit under its name (``q_proj.lora_A.default.weight``); on disk the name
is gone (``q_proj.lora_A.weight``) and layer methods carry the ``base_model.model.`` prefix.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from typing import TypeVar

_T = TypeVar("_T")

#: The prefix PEFT's ``PeftModel`` puts in front of the wrapped model's keys.
MODEL_PREFIX = "base_model.model."
#: The prefix of tensors the tuner holds once per model, beside the wrapped model (VeRA's ``base_model.vera_A``).
#: Such keys are complete as they are: :func:`add_prefix` leaves them unchanged.
TUNER_PREFIX = "base_model."


def is_tuner_key(key: str) -> bool:
    """Whether ``key`` names a tensor held once per model (``base_model.<name>``, ``<name>`` without a dot).

    >>> is_tuner_key("base_model.vera_A"), is_tuner_key("base_model.model.q.lora_A.weight")
    (True, False)
    """
    return key.startswith(TUNER_PREFIX) and "." not in key[len(TUNER_PREFIX) :]


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
    """Prefix every key but those of tensors held once per model (:func:`is_tuner_key`)."""
    return {k if is_tuner_key(k) else prefix + k: v for k, v in state.items()}


def strip_prefix(key: str, prefix: str = MODEL_PREFIX) -> str:
    """Remove ``prefix`` from ``key`` when present."""
    return key[len(prefix) :] if key.startswith(prefix) else key


#: Module names that parallel and compile wrappers insert into state-dict keys: FSDP1's inner module, activation
#: checkpointing's, and ``torch.compile``'s ``OptimizedModule``. They are never part of an adapter's keys.
WRAPPER_SEGMENTS = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod")
#: Prefixes a whole state dict may carry from the object it was taken from: DDP / FSDP1's ``module.``, a
#: compiled model's ``_orig_mod.``, a ``PeftModel``'s ``base_model.model.``.
STATE_PREFIXES = ("module.", "_orig_mod.", MODEL_PREFIX)


def strip_wrapper_segments(key: str) -> str:
    """Remove every wrapper segment (:data:`WRAPPER_SEGMENTS`) from a dotted key or module name.

    >>> strip_wrapper_segments("_orig_mod.model.layers.0._fsdp_wrapped_module.q_proj.lora_A.default.weight")
    'model.layers.0.q_proj.lora_A.default.weight'
    """
    if not any(segment in key for segment in WRAPPER_SEGMENTS):
        return key
    return ".".join(part for part in key.split(".") if part not in WRAPPER_SEGMENTS)


def match_keys(keys: Iterable[str], known: Collection[str]) -> dict[str, str]:
    """``{key: known key}`` for each key that names one of ``known`` once wrapper segments are removed and
    leading :data:`STATE_PREFIXES` are peeled off one by one (stopping at the first match, so a real module
    named ``module`` is never lost). Keys that match nothing are absent from the result.

    >>> match_keys(["module.base_model.model.q.lora_A.default.weight", "x"], {"q.lora_A.default.weight"})
    {'module.base_model.model.q.lora_A.default.weight': 'q.lora_A.default.weight'}
    """
    found: dict[str, str] = {}
    for key in keys:
        candidate = strip_wrapper_segments(key)
        while candidate not in known:
            prefix = next((p for p in STATE_PREFIXES if candidate.startswith(p)), None)
            if prefix is None:
                break
            candidate = candidate[len(prefix) :]
        if candidate in known:
            found[key] = candidate
    return found


def remap_keys(state: Mapping[str, _T], key_mapping: Mapping[str, str]) -> dict[str, _T]:
    """``state`` with each key renamed by the first ``{regex: replacement}`` of ``key_mapping`` that matches it
    (``re.subn``), applied after the ``base_model.model.`` / ``base_model.`` prefix, which is kept: transformers'
    ``_checkpoint_conversion_mapping`` for a model whose module layout changed (PEFT's ``key_mapping``)."""
    renamed = {}
    for key, value in state.items():
        prefix = next((p for p in (MODEL_PREFIX, "base_model.") if key.startswith(p)), "")
        rest = key[len(prefix) :]
        for pattern, replacement in key_mapping.items():
            new, count = re.subn(pattern, replacement, rest)
            if count:
                rest = new
                break
        renamed[prefix + rest] = value
    return renamed
