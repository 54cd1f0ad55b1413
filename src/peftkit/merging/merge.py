"""The one routine that writes into a base weight, shared by every method's merge and unmerge.

Methods describe *what* to do to the weight (``W += s * B @ A``, ``W *= l``, ...) as an in-place function;
this module decides *how*: directly in place, or on a copy that is checked for non-finite values first
(``safe_merge``), so that a broken adapter never corrupts the base model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from peftkit.quant.base import backend_for
from peftkit.quant.merge import warn_requantized


class MergeError(ValueError):
    """A merge would write NaN or infinite values into the base weights."""


def update_weight(
    module: nn.Module, update: Callable[[torch.Tensor], object], *, safe: bool = False, what: str = "adapter"
) -> None:
    """Apply ``update`` (an in-place function) to ``module.weight``.

    A quantized weight (see :mod:`peftkit.quant`) is dequantized to float32, updated, and quantized again with
    the layer's own scheme, with a :class:`~peftkit.quant.merge.QuantizedMergeWarning` about the rounding.

    Args:
        module: The base layer that owns ``weight``.
        update: Mutates the tensor it is given, e.g. ``lambda w: w.addmm_(B, A, alpha=s)``.
        safe: Work on a copy and check it is finite before writing it back.
        what: Name used in the error message.

    Raises:
        MergeError: ``safe`` is set and the result holds NaN or Inf; the weight is left unchanged.
    """
    backend = backend_for(module)
    if backend is not None:
        with torch.no_grad():
            dense = backend.dequantize(module)  # a fresh copy: the packed weight is untouched until replaced
            update(dense)
            if safe and not torch.isfinite(dense).all():
                raise MergeError(f"Merging {what} would write NaN/Inf into the base weights; the adapter is broken.")
            backend.replace_weight(module, dense)
        warn_requantized(backend)
        return
    weight: torch.Tensor = module.weight  # type: ignore[assignment]  # every layer merged here has a weight tensor
    with torch.no_grad():
        if not safe:
            update(weight.data)
            return
        trial = weight.data.clone()
        update(trial)
        if not torch.isfinite(trial).all():
            raise MergeError(f"Merging {what} would write NaN/Inf into the base weights; the adapter is broken.")
        weight.data.copy_(trial)
