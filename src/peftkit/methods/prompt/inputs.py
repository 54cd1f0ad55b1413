"""Making room for ``n`` virtual tokens in a batch: masks, labels, token types, position ids, embeddings.

All functions are pure and work on ``(batch, seq, ...)`` tensors; the virtual tokens always go first.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from peftkit.errors import UsageError

#: The label that the loss ignores (transformers' ``CrossEntropyLoss(ignore_index=-100)``).
IGNORE_INDEX = -100


def batch_size_of(input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None) -> int:
    """The batch size of whichever of ``input_ids`` / ``inputs_embeds`` is given."""
    source = input_ids if input_ids is not None else inputs_embeds
    if source is None:
        raise UsageError("Pass input_ids or inputs_embeds.")
    return int(source.shape[0])


def _prefix(tensor: torch.Tensor, n: int, value: float) -> torch.Tensor:
    """``tensor`` ``(B, S)`` with ``n`` columns of ``value`` in front: ``(B, n + S)``."""
    head = torch.full((tensor.shape[0], n), value, dtype=tensor.dtype, device=tensor.device)
    return torch.cat((head, tensor), dim=1)


def extend_attention_mask(mask: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """``(B, S)`` mask -> ``(B, n + S)``: the virtual tokens are always attended to."""
    if mask is None:
        return None
    if mask.dim() != 2:
        raise UsageError(
            f"Prompt methods need a 2-D attention mask (batch, seq), got shape {tuple(mask.shape)}; pass the "
            "padding mask, not a 4-D attention bias."
        )
    return _prefix(mask, n, 1)


def extend_labels(labels: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """``(B, S)`` labels -> ``(B, n + S)`` with ``-100`` (ignored by the loss) at the virtual tokens."""
    return None if labels is None else _prefix(labels, n, IGNORE_INDEX)


def extend_token_type_ids(token_type_ids: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """``(B, S)`` token types -> ``(B, n + S)`` with type 0 at the virtual tokens."""
    return None if token_type_ids is None else _prefix(token_type_ids.long(), n, 0)


def prepend(prompts: torch.Tensor, inputs_embeds: torch.Tensor) -> torch.Tensor:
    """``(B, n, d)`` prompts before ``(B, S, d)`` embeddings (cast to their dtype): ``(B, n + S, d)``."""
    return torch.cat((prompts.to(inputs_embeds.dtype), inputs_embeds), dim=1)


def adjust_positions(kwargs: dict[str, Any], n: int, kv_prefix: bool, warn: bool = True) -> None:
    """Fix ``position_ids`` in place: shifted by ``n`` after a key/value prefix (the real tokens come after the
    prefix); dropped for prepended embeddings, where the model numbers the longer sequence itself."""
    positions = kwargs.get("position_ids")
    if positions is None:
        return
    if kv_prefix:
        kwargs["position_ids"] = positions + n
        return
    if warn:
        warnings.warn(
            "position_ids are ignored with prompt tuning / P-tuning: the model numbers the virtual "
            "tokens and the input together.",
            stacklevel=3,
        )
    kwargs["position_ids"] = None


def drop_token_type_ids(kwargs: dict[str, Any], warn: bool = True) -> None:
    """Remove ``token_type_ids`` (decoder models have no token types for virtual tokens)."""
    if kwargs.get("token_type_ids") is not None and warn:
        warnings.warn("token_type_ids are ignored with prompt methods on this task.", stacklevel=3)
    kwargs.pop("token_type_ids", None)
