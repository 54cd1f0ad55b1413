"""Writing into quantized base weights: dequantize, update, requantize; and the exact undo of it.

Merging an adapter into a quantized layer computes ``W' = Q(f(D(W)))``, with ``D`` the backend's dequantization,
``f`` the method's in-place update (``W + s B A``, ``W * l``, ...) and ``Q`` the layer's own quantization. ``Q``
rounds ``f(D(W))`` to its grid, so the merged layer differs from the unmerged one by up to half a quantization
step per weight (per block of 64 weights for bitsandbytes 4-bit, per row for 8-bit): a rounding that a user
is warned about. Unmerging does not invert ``Q``: the packed weight from before the first merge is kept and
put back, bit for bit.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from peftkit.quant.base import QuantBackend, backend_for


class QuantizedMergeWarning(UserWarning):
    """An adapter was merged into a quantized weight, which rounds the merged weight to the quantization grid."""


def warn_requantized(backend: QuantBackend) -> None:
    """Tell the user that writing into a ``backend`` weight rounded it to the quantization grid."""
    warnings.warn(
        f"Writing into a {backend.name} weight (an adapter merge, or a PiSSA/OLoRA residual): it is dequantized, "
        "updated and quantized again, so the new weight is rounded to the quantization grid and outputs differ "
        "slightly from the exact result (unmerge restores the original quantized weight exactly).",
        QuantizedMergeWarning,
        stacklevel=4,
    )


@dataclass
class BaseSnapshot:
    """What :func:`restore_base` puts back: the backend's handle on the packed weight, and the bias values."""

    backend: QuantBackend
    weight: Any
    bias: torch.Tensor | None


def snapshot_base(module: nn.Module) -> BaseSnapshot | None:
    """A snapshot of a quantized ``module``'s weight and bias before a merge; ``None`` for unquantized layers
    (their merges are undone arithmetically)."""
    backend = backend_for(module)
    if backend is None:
        return None
    bias = getattr(module, "bias", None)
    return BaseSnapshot(backend, backend.snapshot(module), None if bias is None else bias.detach().clone())


def restore_base(module: nn.Module, snapshot: BaseSnapshot) -> None:
    """Put back the weight and bias captured by :func:`snapshot_base`."""
    snapshot.backend.restore(module, snapshot.weight)
    bias = getattr(module, "bias", None)
    if bias is not None and snapshot.bias is not None:
        with torch.no_grad():
            bias.copy_(snapshot.bias)


def prepare_base(module: nn.Module) -> None:
    """Let the backend of a quantized ``module`` make it fit for adapters (no-op for other layers)."""
    backend = backend_for(module)
    if backend is not None:
        backend.prepare(module)


def release_base(module: nn.Module) -> None:
    """Undo :func:`prepare_base` when the adapter layer around ``module`` is unloaded."""
    backend = backend_for(module)
    if backend is not None:
        backend.release(module)
