"""Whole modules trained alongside an adapter (e.g. a classifier head): one trainable copy per adapter.

In memory the wrapper holds ``original_module`` (frozen) and ``modules_to_save[<adapter>]`` (a copy that
trains); on disk only the copy is saved, under the original module's own key names.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from peftkit.errors import AdapterNameError, UsageError
from peftkit.layers.base import CALL_STATE, AdapterState
from peftkit.layers.state import AdapterStatus, apply_status, first_status, status_after_delete, wrapper_active


class ModulesToSaveWrapper(AdapterState, nn.Module):
    """Routes calls to the active adapter's copy of a module, or to the original when none is active.

    It records the model's :class:`~peftkit.layers.state.AdapterStatus`; its own active list holds only the
    adapters it has a copy for (at most one), so ``active_adapters`` never names a copy that does not exist.
    """

    def __init__(self, module_to_save: nn.Module, adapter_name: str) -> None:
        super().__init__()
        self.original_module = module_to_save
        self.modules_to_save = nn.ModuleDict()
        self._active_adapter: list[str] = []
        self._disable_adapters = False
        self.update(adapter_name)

    def update(self, adapter_name: str, copy_weights: bool = True) -> None:
        """Add a copy of the original module for ``adapter_name``; it trains iff the recorded status says so
        (a wrapper's first adapter is active and trainable until the model's status is applied)."""
        self.modules_to_save[adapter_name] = copy.deepcopy(self.original_module)
        self.original_module.requires_grad_(False)
        status = self.__dict__.get("_model_status") or first_status(adapter_name, trainable=True)
        apply_status([self], status)

    def adapter_names(self) -> set[str]:
        return set(self.modules_to_save.keys())

    def all_adapter_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        for name, module in self.modules_to_save.items():
            yield from ((name, param) for param in module.parameters())

    def check_status(self, status: AdapterStatus) -> None:
        """Raise before anything changes if ``status`` would activate two of this wrapper's copies."""
        wrapper_active(status, self.adapter_names())

    def record_status(self, status: AdapterStatus) -> None:
        self.__dict__["_model_status"] = status
        self._active_adapter = wrapper_active(status, self.adapter_names())
        self._disable_adapters = status.disabled

    def recorded_status(self) -> AdapterStatus:
        status = self.__dict__.get("_model_status")
        return status if status is not None else super().recorded_status()

    def active_module(self) -> nn.Module:
        """The module a plain forward uses now.

        Raises:
            AdapterNameError: the active adapter has no copy here (its copy was removed behind the wrapper's back).
        """
        if self._disable_adapters or not self._active_adapter:
            return self.original_module
        name = self._active_adapter[0]
        if name not in self.modules_to_save:
            raise AdapterNameError(
                f"Active adapter {name!r} has no copy in this modules_to_save wrapper (it holds "
                f"{sorted(self.modules_to_save)}); call set_adapter with an adapter the model has."
            )
        return self.modules_to_save[name]

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Call the active copy with the arguments as given (positional or keyword); in a mixed batch, every tensor
        argument whose first dimension is the batch is split by sample."""
        routing = CALL_STATE.routing
        if routing is None or self._disable_adapters:
            return self.active_module()(*args, **kwargs)
        first = next((v for v in (*args, *kwargs.values()) if torch.is_tensor(v) and v.dim()), None)
        if first is None:
            raise UsageError(f"A mixed batch reached {type(self.original_module).__name__} without a batched "
                             "tensor among its arguments.")  # fmt: skip
        routing = routing.for_batch(first.shape[0])
        batch = len(routing)

        def take(value: Any, rows: torch.Tensor) -> Any:
            is_batched = torch.is_tensor(value) and value.dim() and value.shape[0] == batch
            return value.index_select(0, rows) if is_batched else value

        result: torch.Tensor | None = None
        for name, rows in routing.groups(first.device):
            module = self.modules_to_save[name] if name in self.modules_to_save else self.original_module
            sub = module(*(take(a, rows) for a in args), **{k: take(v, rows) for k, v in kwargs.items()})
            if result is None:
                result = sub.new_empty((batch, *sub.shape[1:]))
            result.index_copy_(0, rows, sub)
        assert result is not None
        return result

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.active_module(), name)  # e.g. .weight of a wrapped lm_head

    def set_adapter(self, adapter_names: str | Sequence[str], trainable: bool = True) -> None:
        """Activate ``adapter_names`` here (PEFT's wrapper API); the model-level functions filter names instead.

        Raises:
            AdapterNameError: a name this wrapper holds no copy for, or two names it holds.
        """
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        unknown = [n for n in names if n not in self.modules_to_save]
        if unknown:
            raise AdapterNameError(
                f"This modules_to_save wrapper holds no copy for {unknown}; it holds {sorted(self.modules_to_save)}."
            )
        super().set_adapter(names, trainable)

    def adapter_parameters(self, adapter: str) -> Iterable[nn.Parameter]:
        return self.modules_to_save[adapter].parameters() if adapter in self.modules_to_save else []

    def delete_adapter(self, adapter: str, status: AdapterStatus | None = None) -> None:
        """Remove ``adapter``'s copy, then record ``status`` (default: decided from this wrapper alone)."""
        before = self.recorded_status()
        if adapter in self.modules_to_save:
            del self.modules_to_save[adapter]
        apply_status([self], status or status_after_delete(before, adapter, self.modules_to_save))
