"""Trainable tokens inside a LoRA adapter (``LoraConfig(trainable_token_indices=...)``), laid out as PEFT does.

PEFT wraps each chosen embedding in a ``TrainableTokensWrapper`` whose child ``token_adapter`` is a trainable-tokens
layer, so the rows sit at ``<embedding>.token_adapter.trainable_tokens_delta`` (on disk without the adapter name).
:class:`TrainableTokensWrapper` is that wrapper as a template adapter layer: its per-adapter containers are the
child's (dotted attribute names), its base layer is the child's base, and the math is the child's
(:mod:`peftkit.methods.trainable_tokens.layer`). :class:`TiedTokensWrapper` is the tied output head's: it computes
with the input embedding's rows (the same ``Parameter``) but, as in PEFT, does not save them again.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from peftkit.layers.base import AdapterLayer
from peftkit.methods.trainable_tokens.layer import TrainableTokensLayer


class TrainableTokensWrapper(AdapterLayer):
    """``<embedding>`` -> wrapper with child ``token_adapter`` (a :class:`TrainableTokensLayer` on the embedding)."""

    adapter_layer_names: ClassVar[tuple[str, ...]] = ("token_adapter.trainable_tokens_delta",)
    base_child: ClassVar[str] = "token_adapter"  # where the base's tensors sit (io/base_state.py)
    other_param_names: ClassVar[tuple[str, ...]] = (
        "token_adapter.token_indices",
        "token_adapter.trainable_tokens_original",
    )

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool = False) -> None:
        nn.Module.__init__(self)  # not AdapterLayer's: the base is registered in the child, not under ``base_layer``
        self.token_adapter = TrainableTokensLayer(base_layer)
        # ``base_layer`` as a plain attribute (no second state-dict path): the template's disabled / merged forward
        # and unwrapping use it; the child keeps it registered, so ``.to()`` still moves it.
        self.__dict__.update(base_layer=base_layer, _disable_adapters=False, merged_adapters=[], _base_snapshot=None)
        self.in_features, self.out_features = self.token_adapter.in_features, self.token_adapter.out_features
        self._active_adapter: list[str] = []

    def __getattr__(self, name: str) -> Any:
        if "." in name:  # the dotted container names above
            return functools.reduce(getattr, name.split("."), self)
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "token_adapter":
                raise
            return getattr(self.token_adapter.get_base_layer(), name)  # embedding_dim, padding_idx, ...

    def update_layer(self, adapter: str, facts: Any, init_weights: bool = True) -> None:
        """Add ``adapter``'s rows to the child (see :meth:`TrainableTokensLayer.update_layer`)."""
        self.token_adapter.update_layer(adapter, facts, init_weights)
        if not self._active_adapter:
            self._active_adapter = [adapter]

    def adapted_forward(self, x: torch.Tensor, adapters: Sequence[str], *args: Any, **kwargs: Any) -> torch.Tensor:
        """The child's forward with ``adapters``' rows."""
        return self.token_adapter.adapted_forward(x, adapters, *args, **kwargs)

    def merge_one(self, adapter: str, safe_merge: bool) -> None:
        """Write ``adapter``'s rows into the base table (tokens disjoint from those merged already)."""
        self.token_adapter.check_disjoint([*self.merged_adapters, adapter])
        self.token_adapter.merge_one(adapter, safe_merge)

    def unmerge_one(self, adapter: str) -> None:
        """Write the original rows back."""
        self.token_adapter.unmerge_one(adapter)


class TiedTokensWrapper(TrainableTokensWrapper):
    """The tied output head's wrapper: the input embedding's rows (shared ``Parameter`` objects), applied to the
    head, but none of its tensors is an adapter tensor of its own (nothing saved or loaded here, as in PEFT)."""

    adapter_layer_names: ClassVar[tuple[str, ...]] = ()
    other_param_names: ClassVar[tuple[str, ...]] = (
        "token_adapter.trainable_tokens_delta",
        "token_adapter.token_indices",
        "token_adapter.trainable_tokens_original",
    )

    def tie_to(self, source: TrainableTokensWrapper, adapter: str) -> None:
        """Compute ``adapter`` with ``source``'s rows."""
        self.token_adapter.tie_to(source.token_adapter, adapter)
        if not self._active_adapter:
            self._active_adapter = list(source._active_adapter)

    def holds(self, adapter: str) -> bool:
        """Whether the head computes with ``adapter``'s rows."""
        return adapter in self.token_adapter.trainable_tokens_delta

    def adapter_names(self) -> set[str]:
        """The adapters whose rows the head computes with."""
        return set(self.token_adapter.trainable_tokens_delta.keys())

    def all_adapter_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """None of its own: the rows are the input embedding's, which marks what trains."""
        return iter(())  # the source's parameters; it marks what trains
