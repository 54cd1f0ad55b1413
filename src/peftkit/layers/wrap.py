"""Replacing modules inside a model by name, and putting the originals back."""

from __future__ import annotations

from torch import nn
from torch.nn.modules import module as module_impl


def get_submodule_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """``(parent, attribute)`` such that ``getattr(parent, attribute)`` is ``model.get_submodule(name)``."""
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def get_submodules(model: nn.Module, key: str) -> tuple[nn.Module, nn.Module, str]:
    """``(parent, module, attribute)`` of the module named ``key`` (PEFT's ``_get_submodules``)."""
    parent, child = get_submodule_parent(model, key)
    return parent, model.get_submodule(key), child


def replace_module(model: nn.Module, name: str, new: nn.Module, parent: nn.Module | None = None) -> nn.Module:
    """Put ``new`` where module ``name`` was; returns the module that was there.

    Args:
        parent: The module that holds ``name`` (looked up from ``model`` when not given).
    """
    child = name.rpartition(".")[2]
    if parent is None:
        parent, child = get_submodule_parent(model, name)
    registered = parent._modules
    if child in registered and not module_impl._global_module_registration_hooks:
        # what ``setattr`` does for a module already registered under ``child``, without its generic checks
        old = registered[child]
        registered[child] = new
        return old  # type: ignore[return-value]  # a registered child (``None`` only if the model holds one so)
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old
