"""torchao backend: an ``nn.Linear`` whose weight is a torchao quantized tensor subclass.

torchao replaces ``module.weight`` by a tensor subclass (``Int8Tensor`` for ``Int8WeightOnlyConfig``,
``IntxUnpackedToInt8Tensor`` for ``IntxWeightOnlyConfig``, ...) that reports the logical shape and dtype and
dequantizes itself: ``W = (q - z) * scale`` per block of ``block_size``. Adapters read ``W`` through
``dequantize()``; merging requantizes with the tensor's own block size (the subclasses below), and refuses,
with the type named, for subclasses it does not know how to rebuild.

torchao is imported here only, lazily (this module is loaded once ``torchao`` already is).

``Int4WeightOnlyConfig`` has no CPU kernel in torchao 0.18 (its packing formats need CUDA, XPU or the
``mslk`` library); on the CPU, ``IntxWeightOnlyConfig(weight_dtype=torch.int4)`` is torchao's 4-bit
weight-only scheme, and it is covered here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from peftkit.errors import UnsupportedError


def torchao() -> Any:
    """The ``torchao`` package with the submodules used here, imported on first use: peftkit's one import of it."""
    import torchao.quantization.granularity
    import torchao.utils

    return torchao


def _requantize_int8(old: Any, weight: torch.Tensor) -> torch.Tensor:
    """``Int8Tensor`` with ``old``'s block size, activation quantization and range."""
    return type(old).from_hp(
        weight,
        torchao().quantization.granularity.PerBlock(tuple(old.block_size)),
        act_quant_kwargs=old.act_quant_kwargs,
        reduce_range=old.reduce_range,
    )


def _requantize_intx(old: Any, weight: torch.Tensor) -> torch.Tensor:
    """``IntxUnpackedToInt8Tensor`` with ``old``'s block size, target dtype and activation quantization."""
    return type(old).from_hp(
        weight,
        tuple(old.block_size),
        old.target_dtype,
        activation_quantization=old.activation_quantization,
    )


#: Tensor subclass name -> how to quantize a new float weight like an existing one.
REQUANTIZERS: dict[str, Callable[[Any, torch.Tensor], torch.Tensor]] = {
    "Int8Tensor": _requantize_int8,
    "IntxUnpackedToInt8Tensor": _requantize_intx,
}


@dataclass
class TorchaoBackend:
    """Any module whose ``weight`` is a torchao ``TorchAOBaseTensor`` with a ``dequantize()`` method."""

    name: str = "torchao"

    def matches(self, module: Any) -> bool:
        return isinstance(getattr(module, "weight", None), torchao().utils.TorchAOBaseTensor)

    def weight_shape(self, module: Any) -> torch.Size:
        return module.weight.shape

    def dequantize(self, module: Any) -> torch.Tensor:
        return module.weight.dequantize().to(torch.float32)

    def compute_dtype(self, module: Any) -> torch.dtype:
        return module.weight.dtype

    def replace_weight(self, module: Any, weight: torch.Tensor) -> None:
        old = module.weight
        requantize = REQUANTIZERS.get(type(old).__name__)
        if requantize is None:
            known = ", ".join(sorted(REQUANTIZERS))
            raise UnsupportedError(
                f"Cannot requantize a torchao {type(old).__name__} weight (merging into it is supported for: "
                f"{known}); keep the adapter unmerged, or merge into a non-quantized copy of the base model."
            )
        module.weight = nn.Parameter(requantize(old, weight.to(old.dtype)), requires_grad=False)

    def snapshot(self, module: Any) -> Any:
        return module.weight

    def restore(self, module: Any, snapshot: Any) -> None:
        module.weight = snapshot

    def prepare(self, module: Any) -> None:
        return None

    def release(self, module: Any) -> None:
        return None

    def training_error(self, module: Any) -> str | None:
        if callable(getattr(module.weight, "dequantize", None)):
            return None
        return f"its torchao {type(module.weight).__name__} weight cannot be dequantized for the input gradient"


BACKENDS = (TorchaoBackend(),)
