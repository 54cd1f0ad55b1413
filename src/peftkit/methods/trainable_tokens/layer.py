"""Trainable-tokens layer on ``nn.Embedding`` (and on a tied output head, ``nn.Linear``).

For an embedding ``E (V, d)`` and adapter rows ``T (n, d)`` at token ids ``idx (n,)``, the adapted table is
``E'`` with ``E'[idx] = T`` (PEFT calls ``T`` ``trainable_tokens_delta``, though it holds the rows themselves):

* embedding: ``y = E'[x]`` (times the base's ``embed_scale`` for scaled embeddings), computed as the base lookup
  with the looked-up tokens in ``idx`` swapped for their row of ``T`` (no ``V x d`` copy per forward);
* tied output head (``logits = h E^T``): ``y = h E'^T``, i.e. the base logits with columns ``idx`` replaced by
  ``h T^T`` (plus their bias).

Merging writes ``T`` into the base rows; unmerging writes the saved original rows back (exact). Adapters active
together must train disjoint tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from peftkit.errors import ConfigError, UsageError
from peftkit.layers.base import AdapterLayer
from peftkit.layers.features import in_out_features
from peftkit.layers.placement import adapter_device
from peftkit.merging.merge import update_weight


class RowStore(nn.Module):
    """Per adapter, a tensor kept as a non-persistent buffer (follows ``.to()``, stays out of state dicts)."""

    def __contains__(self, adapter: object) -> bool:
        return isinstance(adapter, str) and adapter in self._buffers

    def __getitem__(self, adapter: str) -> torch.Tensor:
        return self._buffers[adapter]  # type: ignore[return-value]  # only tensors are stored

    def __setitem__(self, adapter: str, tensor: torch.Tensor) -> None:
        self.register_buffer(adapter, tensor, persistent=False)

    def __delitem__(self, adapter: str) -> None:
        del self._buffers[adapter]
        self._non_persistent_buffers_set.discard(adapter)

    def __iter__(self) -> Iterator[str]:
        return iter(self._buffers)

    def keys(self) -> list[str]:
        return list(self._buffers)


def row_slots(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """For every token of ``x``, its position in ``indices`` or ``-1`` (``O(len(x) log n)``, no ``V``-sized table)."""
    ordered, order = indices.sort()
    pos = torch.searchsorted(ordered, x).clamp(max=len(ordered) - 1)
    return torch.where(ordered[pos] == x, order[pos], torch.full_like(pos, -1))


class TrainableTokensLayer(AdapterLayer):
    """Holds per adapter the trained rows ``trainable_tokens_delta (n, d)``, their token ids and the original rows.

    A layer given an adapter by :meth:`tie_to` shares all three with another layer (the input embedding of tied
    word embeddings): one table, seen by both.
    """

    adapter_layer_names = ("trainable_tokens_delta",)
    other_param_names = ("token_indices", "trainable_tokens_original")

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool = False) -> None:
        super().__init__(base_layer)
        self.in_features, self.out_features = in_out_features(self.get_base_layer())
        self.trainable_tokens_delta = nn.ParameterDict()
        self.trainable_tokens_original = RowStore()
        self.token_indices: dict[str, list[int]] = {}

    def tie_to(self, source: TrainableTokensLayer, adapter: str) -> None:
        """Share ``source``'s rows (the same ``Parameter``), token ids and originals of ``adapter``: this layer's
        base holds the same table (tied word embeddings)."""
        self.trainable_tokens_delta[adapter] = source.trainable_tokens_delta[adapter]
        self.trainable_tokens_original[adapter] = source.trainable_tokens_original[adapter]
        self.token_indices[adapter] = source.token_indices[adapter]
        if not self._active_adapter:
            self._active_adapter = list(source._active_adapter)

    def update_layer(self, adapter: str, facts: Any, init_weights: bool = True) -> None:
        """Add ``adapter`` training rows ``facts.token_indices`` (``facts.init``: start from the original rows).

        Raises:
            ConfigError: no token id, or one outside the table.
        """
        weight = self.get_base_layer().weight
        indices = list(facts.token_indices)
        if not indices:
            raise ConfigError("TrainableTokensConfig.token_indices is empty; list the token ids whose rows train.")
        if max(indices) >= weight.shape[0]:
            raise ConfigError(
                f"token id {max(indices)} is outside the embedding table of {weight.shape[0]} rows; "
                "resize the embeddings first (model.resize_token_embeddings) or fix token_indices."
            )
        device = adapter_device(self.get_base_layer())
        original = weight.detach()[torch.tensor(indices, device=weight.device)].clone()
        if not init_weights or device.type == "meta":
            rows = torch.empty_like(original, device=device)
        else:
            rows = original.clone() if facts.init else torch.randn_like(original)
        self.trainable_tokens_delta[adapter] = nn.Parameter(rows.to(device))
        self.trainable_tokens_original[adapter] = original
        self.token_indices[adapter] = indices
        if not self._active_adapter:
            self._active_adapter = [adapter]

    def _indices(self, adapter: str, device: torch.device) -> torch.Tensor:
        return torch.tensor(self.token_indices[adapter], device=device, dtype=torch.long)

    def check_disjoint(self, adapters: Sequence[str]) -> None:
        """Raise :class:`UsageError` when two of ``adapters`` train the same token."""
        seen: set[int] = set()
        for name in adapters:
            overlap = seen.intersection(self.token_indices[name])
            if overlap:
                raise UsageError(
                    f"Adapters {list(adapters)} both train tokens {sorted(overlap)}; activate or merge adapters "
                    "with disjoint token_indices only."
                )
            seen.update(self.token_indices[name])

    def adapted_forward(self, x: torch.Tensor, adapters: Sequence[str], *args: Any, **kwargs: Any) -> torch.Tensor:
        self.check_disjoint(adapters)
        result = self.base_layer(x, *args, **kwargs)
        for name in adapters:
            result = self._replace_rows(result, x, name)
        return result

    def _replace_rows(self, result: torch.Tensor, x: torch.Tensor, adapter: str) -> torch.Tensor:
        rows = self.trainable_tokens_delta[adapter]
        base = self.get_base_layer()
        indices = self._indices(adapter, x.device)
        if isinstance(base, nn.Embedding):
            slots = row_slots(x, indices)
            looked_up = F.embedding(slots.clamp(min=0), rows)
            scale = getattr(base, "embed_scale", None)
            if scale is not None:
                looked_up = looked_up * torch.as_tensor(scale).to(looked_up)
            return torch.where((slots >= 0).unsqueeze(-1), looked_up.to(result.dtype), result)
        columns = F.linear(x.to(rows.dtype), rows)
        bias = getattr(base, "bias", None)
        if bias is not None:
            columns = columns + bias[indices].to(columns)
        return result.index_copy(result.dim() - 1, indices, columns.to(result.dtype))

    def merge_one(self, adapter: str, safe_merge: bool) -> None:
        self.check_disjoint([*self.merged_adapters, adapter])
        self._write_rows(adapter, self.trainable_tokens_delta[adapter].detach(), safe_merge)

    def unmerge_one(self, adapter: str) -> None:
        self._write_rows(adapter, self.trainable_tokens_original[adapter], False)

    def _write_rows(self, adapter: str, rows: torch.Tensor, safe: bool) -> None:
        base = self.get_base_layer()
        indices = self._indices(adapter, base.weight.device)
        update_weight(base, lambda w: w.index_copy_(0, indices, rows.to(w)), safe=safe, what=adapter)
