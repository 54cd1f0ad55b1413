"""BOFT layers (Liu et al., 2024, arXiv:2311.06243): ``y = s * (W M^T x) + b`` with ``M`` the product of
butterfly factors (see :mod:`peftkit.methods.boft.butterfly`) and ``s`` a learned scale per output row.

PEFT's state-dict names and shapes: ``boft_R.<adapter>`` ``(m, D, b, b)`` (each block's skew part ``(A - A^T)/2``
goes through the exact Cayley transform) and ``boft_s.<adapter>``, ``(out, 1)`` on Linear, ``(1, out)`` on
Conv2d. Linear rotates the input (``x M`` as a row vector); Conv2d convolves with ``W' = s * (W M^T)``, ``W``
flattened to ``(C_out, C_in k k)``. Several active adapters compose as PEFT does: ``x M_n ... M_1`` and
``s_1 ... s_n`` (the order their merges produce).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from peftkit.layers.base import AdapterLayer
from peftkit.layers.features import in_out_features
from peftkit.layers.placement import adapter_device
from peftkit.merging.merge import update_weight
from peftkit.methods.boft.butterfly import apply_butterfly, butterfly_matrix
from peftkit.methods.lora.layer import adapter_dtype
from peftkit.methods.oft.orthogonal import cayley, drop_blocks, skew_part
from peftkit.quant.base import weight_shape


@dataclass(frozen=True)
class BOFTLayerSpec:
    """Per-layer facts derived from a :class:`~peftkit.methods.boft.config.BOFTConfig` and the module.

    Attributes:
        width: The rotated width (``in_features``, or ``C_in k k``) = ``block_size * block_num``.
        block_size: ``b``.
        block_num: Blocks per factor ``D``.
        factors: Butterfly factors ``m``.
        dropout: Fraction of one factor's blocks set to the identity in a training forward.
        init: ``True``: identity (zero blocks, ``s = 1``); ``False``: random around it.
    """

    width: int
    block_size: int
    block_num: int
    factors: int = 1
    dropout: float = 0.0
    init: bool = True


class BOFTLayer(AdapterLayer):
    """State shared by BOFT layers: ``boft_R``, ``boft_s`` (PEFT's names) and the per-adapter block split."""

    repr_prefix = "boft."
    adapter_layer_names = ("boft_R", "boft_s")
    other_param_names = ("boft_block_size", "boft_block_num", "boft_spec")

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool = False) -> None:
        super().__init__(base_layer)
        self.in_features, self.out_features = in_out_features(self.get_base_layer())
        self.boft_R = nn.ParameterDict()
        self.boft_s = nn.ParameterDict()
        self.boft_block_size: dict[str, int] = {}
        self.boft_block_num: dict[str, int] = {}
        self.boft_spec: dict[str, BOFTLayerSpec] = {}

    def scale_shape(self, out: int) -> tuple[int, int]:
        """Shape of ``boft_s`` for ``out`` output features (PEFT's, per layer type)."""
        return (out, 1)

    def update_layer(self, adapter: str, facts: BOFTLayerSpec, init_weights: bool = True) -> None:
        """Create (or replace) adapter ``adapter``: ``boft_R (m, D, b, b)`` and ``boft_s``.

        Args:
            init_weights: ``False`` allocates without initialising, for weights a load will overwrite.
        """
        base = self.get_base_layer()
        device, dtype = adapter_device(base), adapter_dtype(base.weight)
        shape = (facts.factors, facts.block_num, facts.block_size, facts.block_size)
        blocks = torch.empty(shape, device=device, dtype=dtype)
        scale = torch.empty(self.scale_shape(int(weight_shape(base)[0])), device=device, dtype=dtype)
        if init_weights:
            with torch.no_grad():
                blocks.zero_() if facts.init else blocks.normal_(0.0, 0.1)
                scale.fill_(1.0) if facts.init else scale.normal_(1.0, 0.1)
        self.boft_R[adapter] = nn.Parameter(blocks)
        self.boft_s[adapter] = nn.Parameter(scale)
        self.boft_block_size[adapter] = facts.block_size
        self.boft_block_num[adapter] = facts.block_num
        self.boft_spec[adapter] = facts
        if not self._active_adapter:
            self._active_adapter = [adapter]

    def blocks(self, adapter: str, dtype: torch.dtype | None = None, dropout: bool = False) -> torch.Tensor:
        """The orthogonal blocks ``(m, D, b, b)`` of ``adapter``: the Cayley transforms of the skew parts.

        Args:
            dtype: Compute in this dtype (default: the parameters').
            dropout: Apply ``boft_dropout`` (training forwards only).
        """
        stored = self.boft_R[adapter]
        stored = stored if dtype is None else stored.to(dtype)
        factors, count, size, _ = stored.shape
        blocks = cayley(skew_part(stored.reshape(factors * count, size, size))).view_as(stored)
        spec = self.boft_spec[adapter]
        return drop_blocks(blocks, spec.dropout) if dropout and spec.dropout > 0 else blocks

    def rotation(self, adapter: str) -> torch.Tensor:
        """The butterfly matrix ``M (width, width)`` of ``adapter`` (built for inspection; the forward and the
        merge apply its factors without it)."""
        return butterfly_matrix(self.blocks(adapter), self.boft_spec[adapter].width)

    def rotate(
        self,
        x: torch.Tensor,
        adapter: str,
        transpose: bool = False,
        dtype: torch.dtype | None = None,
        dropout: bool = False,
    ) -> torch.Tensor:
        """``x M`` (``x M^T`` with ``transpose``) for rows ``x (..., width)``, computed in the blocks' dtype
        (``dtype``, default the parameters'); ``dropout`` applies ``boft_dropout`` (training forwards)."""
        blocks = self.blocks(adapter, dtype=dtype, dropout=dropout)
        return apply_butterfly(x.to(blocks.dtype), blocks, self.boft_spec[adapter].width, transpose)

    def row_scale(self, adapter: str) -> torch.Tensor:
        """``s`` as ``(out, 1)``, to scale the rows of ``W``."""
        return self.boft_s[adapter].reshape(-1, 1)

    def _transform_weight(self, adapter: str, safe: bool, inverse: bool) -> None:
        """``W <- s * (W M^T)`` (``W <- (W M) / s`` when ``inverse``), ``W`` viewed as ``(out, width)``."""
        dtype = torch.promote_types(self.boft_R[adapter].dtype, torch.float32)
        scale = self.row_scale(adapter).detach().to(dtype)

        def apply(weight: torch.Tensor) -> None:
            flat = weight.view(weight.shape[0], -1)
            with torch.no_grad():
                rotated = self.rotate(flat, adapter, transpose=not inverse, dtype=dtype)
            flat.copy_((rotated / scale if inverse else rotated * scale).to(weight.dtype))

        update_weight(self.get_base_layer(), apply, safe=safe, what=adapter)

    def merge_one(self, adapter: str, safe_merge: bool) -> None:
        self._transform_weight(adapter, safe_merge, inverse=False)

    def unmerge_one(self, adapter: str) -> None:
        self._transform_weight(adapter, safe=False, inverse=True)


class Linear(BOFTLayer):
    """BOFT on ``nn.Linear``; ``x (..., in) -> (..., out)``: ``base(x M) `` with its bias-free part scaled by ``s``."""

    def adapted_forward(self, x: torch.Tensor, adapters: Sequence[str], *args: Any, **kwargs: Any) -> torch.Tensor:
        rotated = x
        scale: torch.Tensor | None = None
        for name in reversed(adapters):
            rotated = self.rotate(rotated, name, dropout=self.training).to(x.dtype)
            own = self.boft_s[name].flatten()
            scale = own if scale is None else scale * own
        result = self.base_layer(rotated, *args, **kwargs)
        bias = self.get_base_layer().bias
        assert scale is not None
        if bias is None:
            return (result * scale).to(result.dtype)
        return ((result - bias) * scale + bias).to(result.dtype)


class Conv2d(BOFTLayer):
    """BOFT on a square-kernel ``nn.Conv2d``: convolve with ``W' = s * (W M^T)``; ``boft_s`` is ``(1, C_out)``."""

    def scale_shape(self, out: int) -> tuple[int, int]:
        return (1, out)

    def adapted_forward(self, x: torch.Tensor, adapters: Sequence[str], *args: Any, **kwargs: Any) -> torch.Tensor:
        base = self.get_base_layer()
        weight = base.weight
        flat = weight.flatten(1)
        for name in adapters:  # W (M_n ... M_1)^T = W M_1^T ... M_n^T
            flat = self.rotate(flat, name, transpose=True, dropout=self.training) * self.row_scale(name)
        result: torch.Tensor = base._conv_forward(x, flat.to(weight.dtype).view_as(weight), base.bias)
        return result
