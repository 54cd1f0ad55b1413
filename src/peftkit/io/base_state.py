"""The base model's own state dict, read from and written into a model that carries adapters.

Injection moves a base module's tensors under its wrapper: ``lin0.weight`` becomes ``lin0.base_layer.weight``
in an adapter layer, and ``head.weight`` becomes ``head.original_module.weight`` under a ``modules_to_save``
wrapper (whose trained copy sits under ``head.modules_to_save.<adapter>``). These functions translate between
those live keys and the keys of the model before injection, leaving every adapter tensor out: the base weights
can be saved, compared or (after FSDP wrapping) loaded with the keys the un-adapted model has.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from peftkit.errors import CheckpointError
from peftkit.layers.base import AdapterLayer
from peftkit.layers.modules_to_save import ModulesToSaveWrapper

#: The child that holds the wrapped module, per wrapper type (any other child belongs to the adapters); a class
#: attribute ``base_child`` overrides it (the trainable-tokens wrapper keeps its base inside ``token_adapter``).
_KEPT_CHILD: dict[type[nn.Module], str] = {AdapterLayer: "base_layer", ModulesToSaveWrapper: "original_module"}


class BaseStateResult(NamedTuple):
    """What :func:`set_base_model_state_dict` did not match: keys as in the model before injection."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class BaseStateError(CheckpointError, RuntimeError):
    """A strict :func:`set_base_model_state_dict` got missing or unexpected keys (a ``RuntimeError`` as from
    ``torch.nn.Module.load_state_dict``)."""


def _inner(model: nn.Module) -> tuple[nn.Module, bool]:
    """The module whose state dict holds the base (``PeftModel.base_model.model``, or ``model`` itself for a model
    with injected layers), and whether the adapters are prompt methods (which leave the base untouched)."""
    if getattr(model, "_is_prompt_learning", False):
        return model.get_base_model(), True  # type: ignore[operator]  # PeftModel.get_base_model
    get_base = getattr(model, "get_base_model", None)
    return (get_base() if callable(get_base) else model), False


def _original_key(live: str, wrappers: Mapping[str, str]) -> str | None:
    """``live`` without the wrapper segments, or ``None`` for an adapter tensor.

    ``wrappers`` maps each wrapper's live module path to the child that holds its wrapped module.
    """
    parts, kept, path = live.split("."), [], ""
    index = 0
    while index < len(parts):
        path = f"{path}.{parts[index]}" if path else parts[index]
        kept.append(parts[index])
        index += 1
        child = wrappers.get(path)
        while child is not None and index < len(parts):  # wrappers nest (trainable tokens: wrapper > layer)
            if parts[index] != child:
                return None
            path, index = f"{path}.{child}", index + 1
            child = wrappers.get(path)
    return ".".join(kept)


def base_key_map(model: nn.Module) -> dict[str, str]:
    """``{original key: live key}`` for every base tensor of ``model``'s state dict (adapter tensors left out)."""
    inner, prompt = _inner(model)
    if prompt:
        return {key: key for key in inner.state_dict()}
    wrappers = {
        name: getattr(module, "base_child", child)
        for name, module in inner.named_modules()
        for kind, child in _KEPT_CHILD.items()
        if isinstance(module, kind)
    }
    out: dict[str, str] = {}
    for live in inner.state_dict():
        original = _original_key(live, wrappers)
        if original is not None:
            out[original] = live
    return out


def get_base_model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's tensors under the keys it had before adapters were injected (no adapter tensor).

    Args:
        model: A ``PeftModel`` (layer or prompt method) or a model with layers injected in place.

    Returns:
        ``{key: tensor}``, the live tensors (not copies), with the un-adapted model's keys.
    """
    inner, _ = _inner(model)
    state = inner.state_dict()
    return {original: state[live] for original, live in base_key_map(model).items()}


def set_base_model_state_dict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True
) -> BaseStateResult:
    """Copy a state dict keyed as the un-adapted model into ``model``'s base tensors; adapters are untouched.

    The inverse of :func:`get_base_model_state_dict` (e.g. base weights loaded after FSDP wrapping).

    Args:
        model: As for :func:`get_base_model_state_dict`.
        state_dict: ``{original key: tensor}``.
        strict: Refuse (before copying anything) a state dict that lacks a base key or has a key the base lacks.

    Returns:
        ``(missing_keys, unexpected_keys)`` in original keys; adapter tensors are never reported missing.

    Raises:
        BaseStateError: ``strict`` and some key is missing or unexpected (a ``RuntimeError``).
    """
    inner, _ = _inner(model)
    keys = base_key_map(model)
    missing = sorted(k for k in keys if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in keys)
    if strict and (missing or unexpected):
        raise BaseStateError(
            f"The state dict does not fit the base model: Missing key(s): {missing[:10]}, Unexpected key(s): "
            f"{unexpected[:10]}. Pass strict=False to load the keys that fit, or use the base model's own keys."
        )
    live: dict[str, Any] = {keys[k]: v for k, v in state_dict.items() if k in keys}
    inner.load_state_dict(live, strict=False)
    return BaseStateResult(missing, unexpected)
