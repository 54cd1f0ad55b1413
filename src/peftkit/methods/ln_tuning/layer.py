"""LN tuning layer (Zhao et al., 2023, arXiv:2312.11420): ``y = f_a(x)`` with ``f_a`` adapter ``a``'s trained
copy of the wrapped module ``f`` (a layer norm: ``f_a(x) = g_a * (x - mean) / sqrt(var + eps) + b_a``, its own
gain ``g_a`` and bias ``b_a``, shapes of the base's).

One adapter at a time: two active adapters cannot both replace the module, so a forward with several active
raises. Merging swaps the copy in as the base layer (and the original into the adapter's slot); unmerging swaps
back, so both are exact.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from peftkit.errors import UsageError
from peftkit.layers.base import AdapterLayer
from peftkit.layers.features import in_out_features


class LNTuningLayer(AdapterLayer):
    """Holds, per adapter, a trained copy of the base module in ``ln_tuning_layers`` (PEFT's state-dict name)."""

    adapter_layer_names = ("ln_tuning_layers",)

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool = False) -> None:
        super().__init__(base_layer)
        self.in_features, self.out_features = in_out_features(self.get_base_layer())
        self.ln_tuning_layers = nn.ModuleDict()

    def update_layer(self, adapter: str, facts: Any = None, init_weights: bool = True) -> None:
        """Add ``adapter`` as a copy of the (unmerged) base module; ``init_weights`` has no effect (a copy is
        what a load overwrites, and it is cheap)."""
        base = self.original_module()
        self.ln_tuning_layers[adapter] = copy.deepcopy(base)
        if not self._active_adapter:
            self._active_adapter = [adapter]

    def original_module(self) -> nn.Module:
        """The wrapped module as it was before any merge."""
        if self.merged_adapters:
            return self.ln_tuning_layers[self.merged_adapters[-1]]
        return self.base_layer

    def single_adapter_forward(self, x: torch.Tensor, adapter: str) -> torch.Tensor | None:
        return self.ln_tuning_layers[adapter](x) if adapter in self.ln_tuning_layers else None

    def adapted_forward(self, x: torch.Tensor, adapters: Sequence[str], *args: Any, **kwargs: Any) -> torch.Tensor:
        """``f_a(x)`` for the single adapter ``a`` in ``adapters``.

        Raises:
            UsageError: more than one adapter is active here.
        """
        if len(adapters) > 1:
            raise UsageError(
                f"LN tuning runs one adapter at a time, but {list(adapters)} are active; set_adapter() one of them."
            )
        return self.ln_tuning_layers[adapters[0]](x, *args, **kwargs)

    def merge(self, safe_merge: bool = False, adapter_names: Sequence[str] | None = None) -> None:
        """Swap the copy of the one adapter in ``adapter_names`` (default: the active one) in as the base.

        Another adapter already merged is unmerged first (with a warning), as in PEFT.

        Raises:
            UsageError: more than one adapter to merge.
        """
        names = list(adapter_names) if adapter_names is not None else self.active_adapters
        names = [name for name in names if name in self.ln_tuning_layers]
        if len(names) > 1:
            raise UsageError(f"LN tuning merges one adapter at a time, got {names}; merge one of them.")
        if not names or names == self.merged_adapters:
            return
        if self.merged_adapters:
            warnings.warn(f"Adapter {self.merged_adapters[0]!r} is merged; unmerging it first.", stacklevel=2)
            self.unmerge()
        self._swap(names[0])
        self.merged_adapters.append(names[0])

    def unmerge_one(self, adapter: str) -> None:
        self._swap(adapter)

    def _swap(self, adapter: str) -> None:
        self.base_layer, self.ln_tuning_layers[adapter] = self.ln_tuning_layers[adapter], self.base_layer
