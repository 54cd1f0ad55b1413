"""The model-level adapter state: the functions every shell calls to activate, enable, disable, delete and
choose what trains (``PeftModel``, the prompt models, the transformers model methods, the Trainer code).

Each reads the :class:`~peftkit.layers.state.AdapterStatus` recorded in the model's adapter modules, derives
the new one with a rule of :mod:`peftkit.layers.state`, and writes it back with
:func:`~peftkit.layers.state.apply_status` (the only writer of adapter ``requires_grad``).
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Sequence
from dataclasses import replace

from torch import nn

from peftkit.errors import AdapterNameError
from peftkit.layers.base import AdapterLayer
from peftkit.layers.shared import drop_shared_tensors
from peftkit.layers.state import (
    AdapterStatus,
    apply_status,
    read_status,
    status_after_delete,
    status_after_requires_grad,
    status_after_set,
)
from peftkit.layers.tree_cache import forget_derived
from peftkit.layers.walk import adapter_names_in, iter_adapter_modules
from peftkit.layers.wrap import remove_layer
from peftkit.locking import exclusive


def model_status(model: nn.Module) -> AdapterStatus | None:
    """The adapter status recorded in ``model``'s adapter modules (``None`` when it has none)."""
    return read_status(module for _, module in iter_adapter_modules(model))


@exclusive
def apply_model_status(model: nn.Module, status: AdapterStatus) -> None:
    """Record ``status`` in every adapter module of ``model`` and set ``requires_grad`` from it (the only
    writer of adapter ``requires_grad``; see :mod:`peftkit.layers.state`)."""
    apply_status((module for _, module in iter_adapter_modules(model)), status)


@exclusive
def set_active_adapters(
    model: nn.Module, names: str | Sequence[str], trainable: bool = True, frozen: Collection[str] = ()
) -> None:
    """Activate ``names``; they train iff ``trainable`` (except ``frozen`` ones), all others are frozen."""
    names = [names] if isinstance(names, str) else list(names)
    apply_model_status(model, status_after_set(model_status(model) or AdapterStatus(), names, not trainable, frozen))


@exclusive
def set_requires_grad(model: nn.Module, names: str | Sequence[str], requires_grad: bool = True) -> None:
    """Let adapters ``names`` train (or stop training) whether active or not (PEFT's ``set_requires_grad``)."""
    names = [names] if isinstance(names, str) else list(names)
    status = model_status(model)
    if status is not None:
        apply_model_status(model, status_after_requires_grad(status, names, requires_grad))


@exclusive
def enable_adapters(model: nn.Module, enabled: bool) -> None:
    """Turn every adapter on or off (off: the model computes like its base and nothing trains; on: what
    trained before trains again)."""
    status = model_status(model)
    if status is not None:
        apply_model_status(model, replace(status, disabled=not enabled))


def adapters_disabled(model: nn.Module) -> bool:
    """Whether ``model``'s adapters are switched off."""
    status = model_status(model)
    return status is not None and status.disabled


@exclusive
def delete_adapter(
    model: nn.Module, adapter_name: str, frozen: Collection[str] = (), remaining: Collection[str] | None = None
) -> AdapterStatus:
    """Remove ``adapter_name`` everywhere; layers left without adapters are unwrapped to their base.

    Args:
        frozen: Adapters loaded for inference (they do not start training by becoming active).
        remaining: The adapters left (default: those the model's modules hold).

    Returns:
        The model's status afterwards (:func:`~peftkit.layers.state.status_after_delete`).
    """
    present = adapter_names_in(model)
    if adapter_name not in present:
        raise AdapterNameError(f"Adapter {adapter_name!r} does not exist; present: {sorted(present)}.")
    forget_derived(model)
    left = set(present) - {adapter_name} if remaining is None else set(remaining) - {adapter_name}
    status = status_after_delete(model_status(model) or AdapterStatus(), adapter_name, left, frozen)
    for name, module in list(iter_adapter_modules(model)):
        if adapter_name not in module.adapter_names():
            continue
        module.delete_adapter(adapter_name, status)
        if isinstance(module, AdapterLayer) and module.is_inner_layer:
            continue  # the layer that placed it removes it
        if not module.adapter_names():
            base = module.base_layer if isinstance(module, AdapterLayer) else module.original_module
            remove_layer(model, name, base)
    drop_shared_tensors(model, adapter_name)
    apply_model_status(model, status)
    return status


@exclusive
def set_trainable_adapters(model: nn.Module, names: Collection[str]) -> None:
    """Make exactly ``names`` the trainable adapters (active or not), e.g. when a checkpoint is restored."""
    status = model_status(model)
    if status is not None:
        apply_model_status(model, replace(status, trainable=frozenset(names)))


def replace_existing_adapter(model: nn.Module, adapter_name: str) -> None:
    """Wrapping a model that already holds adapter ``adapter_name`` again (``get_peft_model`` or
    ``PeftModel.from_pretrained`` twice on one base): warn, and remove the old adapter of that name so that the new
    one takes its place, as PEFT re-creates it in place. Nothing happens when the name is free."""
    if adapter_name not in adapter_names_in(model):
        return
    warnings.warn(
        f"This model already holds an adapter named {adapter_name!r} from an earlier wrapping; it is replaced by the "
        "new one. Call unload() on the earlier PeftModel (or delete that adapter) to start from the plain base model.",
        UserWarning,
        stacklevel=3,
    )
    delete_adapter(model, adapter_name)
