"""DoRA: weight-decomposed low-rank adaptation (Liu et al., 2024, arXiv:2402.09353).

The adapted weight is ``W' = m * (W + s B A) / ||W + s B A||_row``: a trainable magnitude ``m (out,)``
times the direction of the LoRA-updated weight. The row norm ``n`` is detached from the graph (as in the
paper, section 4.3), so for an input ``x``:

    y = (m / n) * (W x + s B A x) + bias
      = base(x) + (m / n - 1) * (base(x) - bias) + (m / n) * s B A x
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from peftkit.layers.placement import onloaded
from peftkit.quant.base import dense_weight


class DoraMagnitude(nn.Module):
    """Holds the magnitude vector as ``weight`` so the state-dict key is ``lora_magnitude_vector.<name>.weight``."""

    def __init__(self, magnitude: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(magnitude, requires_grad=True)


def row_norm(weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``||W + delta||`` over every dimension but the first (output rows): shape ``(out,)``."""
    combined = weight + delta
    return combined.flatten(1).norm(p=2, dim=1)


def dora_combine(
    base_out: torch.Tensor,
    base_out_no_bias: torch.Tensor,
    lora_out: torch.Tensor,
    magnitude: torch.Tensor,
    norm: torch.Tensor,
    channel_dim: int = -1,
) -> torch.Tensor:
    """``base_out + (m/n - 1) * base_out_no_bias + (m/n) * lora_out``, with ``m/n`` broadcast on ``channel_dim``.

    Args:
        base_out: ``base(x)`` including bias.
        base_out_no_bias: ``W x`` (the base output without bias, possibly on dropped-out input).
        lora_out: ``s B A x``.
        magnitude: ``m (out,)``; norm: ``n (out,)`` (detached).
        channel_dim: The output-channel dimension of the activations (-1 for Linear, 1 for Conv).
    """
    shape = [1] * base_out.dim()
    shape[channel_dim] = -1
    factor = (magnitude / norm).view(shape)
    return base_out + (factor - 1) * base_out_no_bias + factor * lora_out


def merge_update(factor: torch.Tensor, delta: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The in-place DoRA merge ``W' = (m / n) (W + s B A)``; ``factor = m / n`` shaped to broadcast over ``W``."""
    return lambda w: w.add_(delta.to(w.dtype)).mul_(factor.to(w.dtype))


def unmerge_update(factor: torch.Tensor, delta: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The in-place inverse of :func:`merge_update` with the same ``factor``: ``W = W' / (m / n) - s B A``."""
    return lambda w: w.div_(factor.to(w.dtype)).sub_(delta.to(w.dtype))


def replayed(weight: torch.Tensor, updates: Sequence[Callable[[torch.Tensor], object]]) -> torch.Tensor:
    """``weight`` after the in-place ``updates`` in order, applied to a copy (``weight`` itself when none)."""
    if not updates:
        return weight
    copy = weight.clone()
    for update in updates:
        update(copy)
    return copy


def unmerge_step(layer: Any, adapter: str) -> Callable[[torch.Tensor], object]:
    """The in-place inverse of merging ``adapter`` into a LoRA ``layer``'s weight (weight only)."""
    if not layer.use_dora.get(adapter):
        return layer.weight_update(adapter, -1.0)
    factor = layer._dora_factor(adapter, layer._dora_norms[adapter])
    return unmerge_update(factor, layer.delta_weight(adapter).detach())


def unmerged_weight(layer: Any) -> torch.Tensor:
    """A LoRA ``layer``'s base weight with no adapter merged: the weight itself, or a copy with the merged adapters
    taken out, last merged first (what a DoRA norm is computed from, as the unmerged forward does)."""
    undo = [unmerge_step(layer, name) for name in reversed(layer.merged_adapters)]
    return replayed(dense_weight(layer.get_base_layer()).detach(), undo)


def dora_output(layer: Any, result: torch.Tensor, x: torch.Tensor, adapter: str) -> torch.Tensor:
    """A LoRA ``Linear`` layer's output with DoRA adapter ``adapter``: ``result`` is ``base(x)`` (plus the
    adapters applied before), ``x (..., in)``; with dropout active in training the base product is recomputed on
    the dropped input, as the formula at the top of this module needs ``W dropout(x)``."""
    dropout = layer.lora_dropout[adapter]
    base = layer.get_base_layer()
    with onloaded(base, write_back=False):  # an offloaded base's weight and bias are on meta until onloaded
        if isinstance(dropout, nn.Identity) or not layer.training:
            dropped, base_no_bias = x, result if base.bias is None else result - base.bias
        else:
            dropped = dropout(x)
            base_weight = dense_weight(base)
            weight = base_weight.T if layer.fan_in_fan_out else base_weight
            base_no_bias = F.linear(dropped.to(weight.dtype), weight)
        norm = layer.dora_norm(adapter)
    magnitude = layer.lora_magnitude_vector[adapter].weight
    lora = layer.lora_out(dropped, adapter)
    out = dora_combine(result.to(lora.dtype), base_no_bias.to(lora.dtype), lora, magnitude, norm)
    return out.to(result.dtype)
