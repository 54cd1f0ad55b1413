"""Whole modules trained alongside an adapter (e.g. a classifier head): one trainable copy per adapter.

In memory the wrapper holds ``original_module`` (frozen) and ``modules_to_save[<adapter>]`` (a copy that
trains); on disk only the copy is saved, under the original module's own key names.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from peftkit.errors import AdapterNameError
from peftkit.layers.base import CALL_STATE, AdapterState


class ModulesToSaveWrapper(AdapterState, nn.Module):
    """Routes calls to the active adapter's copy of a module, or to the original when none is active."""

    def __init__(self, module_to_save: nn.Module, adapter_name: str) -> None:
        super().__init__()
        self.original_module = module_to_save
        self.modules_to_save = nn.ModuleDict()
        self._active_adapter: list[str] = []
        self._disable_adapters = False
        self.update(adapter_name)

    def update(self, adapter_name: str, copy_weights: bool = True) -> None:
        """Add a trainable copy of the original module for ``adapter_name``."""
        self.modules_to_save[adapter_name] = copy.deepcopy(self.original_module)
        self.original_module.requires_grad_(False)
        if not self._active_adapter:
            self._active_adapter = [adapter_name]
        for name, copy_ in self.modules_to_save.items():
            copy_.requires_grad_(name in self._active_adapter)

    def adapter_names(self) -> set[str]:
        return set(self.modules_to_save.keys())

    def active_module(self) -> nn.Module:
        """The module a plain forward uses now."""
        if self._disable_adapters:
            return self.original_module
        for name in self._active_adapter:
            if name in self.modules_to_save:
                return self.modules_to_save[name]
        return self.original_module

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        routing = CALL_STATE.routing
        if routing is None or self._disable_adapters:
            return self.active_module()(x, *args, **kwargs)
        result: torch.Tensor | None = None
        for name, rows in routing.for_batch(x.shape[0]).groups(x.device):
            module = self.modules_to_save[name] if name in self.modules_to_save else self.original_module
            sub = module(x.index_select(0, rows), *args, **kwargs)
            if result is None:
                result = sub.new_empty((x.shape[0], *sub.shape[1:]))
            result.index_copy_(0, rows, sub)
        assert result is not None
        return result

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.active_module(), name)  # e.g. .weight of a wrapped lm_head

    def set_adapter(self, adapter_names: str | Sequence[str], trainable: bool = True) -> None:
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        if len([n for n in names if n in self.modules_to_save]) > 1:
            raise AdapterNameError(f"Only one adapter with modules_to_save can be active at a time, got {names}.")
        for name, module in self.modules_to_save.items():
            module.requires_grad_(trainable and name in names)
        self._active_adapter = names

    def enable_adapters(self, enabled: bool) -> None:
        self._disable_adapters = not enabled

    def adapter_parameters(self, adapter: str) -> Iterable[nn.Parameter]:
        return self.modules_to_save[adapter].parameters() if adapter in self.modules_to_save else []

    def delete_adapter(self, adapter: str) -> None:
        if adapter in self.modules_to_save:
            del self.modules_to_save[adapter]
        if adapter in self._active_adapter:
            self._active_adapter = [n for n in self._active_adapter if n != adapter] or sorted(self.modules_to_save)[:1]
