"""AdaLoRA layers (Zhang et al., 2023): LoRA in SVD form, ``delta W = B diag(E) A``.

Per adapter: ``lora_A (r, in)`` (right singular vectors), ``lora_E (r, 1)`` (singular values),
``lora_B (out, r)`` (left singular vectors) and ``ranknum`` (the initial rank, a frozen scalar kept in
memory but never saved). For an input ``x (..., in)``:

    y = base(x) + dropout(x) @ (A * E)^T @ B^T * s / (ranknum + 1e-5),   s = lora_alpha, or r if lora_alpha <= 0

Pruning a rank zeroes its entry of ``E`` during training; a saved adapter drops those rows (``r`` shrinks)
while ``ranknum`` keeps the initial rank, so the output is unchanged by the truncation.

The layers reuse :class:`~peftkit.methods.lora.layer.LoraLayer` (per-adapter dicts, dropout, merging
through ``delta_weight``); only the parameter containers, initialisation and the product differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from peftkit.errors import UnsupportedError
from peftkit.layers.placement import adapter_device
from peftkit.methods.lora.layer import LoraLayer, LoraLayerSpec, adapter_dtype
from peftkit.quant.base import weight_shape

#: Added to ``ranknum`` before dividing, as in the reference implementation.
RANKNUM_EPS = 1e-5


@dataclass(frozen=True)
class AdaLoraLayerSpec(LoraLayerSpec):
    """LoRA's per-layer facts plus ``ranknum`` (the initial rank the output is divided by).

    ``r`` is the rank actually allocated (``init_r``, or fewer when loading a pruned ``rank_pattern``).
    """

    ranknum: float = 0.0

    @property
    def scaling(self) -> float:
        return float(self.alpha) if self.alpha > 0 else float(self.r)


class SVDLayer(LoraLayer):
    """State shared by AdaLoRA layers; attribute names match PEFT's state-dict keys."""

    repr_prefix: ClassVar[str] = "adalora."

    adapter_layer_names: ClassVar[tuple[str, ...]] = ("lora_A", "lora_B", "lora_E")
    other_param_names: ClassVar[tuple[str, ...]] = ("r", "lora_alpha", "scaling", "lora_dropout", "use_dora", "ranknum")

    lora_A: nn.ParameterDict  # type: ignore[assignment]  # bare parameters (PEFT's AdaLoRA layout), not Linear modules
    lora_B: nn.ParameterDict  # type: ignore[assignment]  # as lora_A
    lora_E: nn.ParameterDict
    ranknum: nn.ParameterDict

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool = False) -> None:
        super().__init__(base_layer, fan_in_fan_out)
        # Bare parameters (no ``.weight``), as PEFT stores them: ``q_proj.lora_A.<adapter>``.
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.lora_E = nn.ParameterDict()
        self.ranknum = nn.ParameterDict()

    def factor_width(self) -> int:
        """Columns of ``lora_A``."""
        return self.in_features

    def create_weights(self, adapter: str, spec: LoraLayerSpec) -> None:
        if spec.lora_bias:
            raise UnsupportedError("AdaLoRA has no lora_bias; set lora_bias=False.")
        weight = self.get_base_layer().weight
        kw: dict[str, Any] = {"device": adapter_device(self.get_base_layer()), "dtype": adapter_dtype(weight)}
        self.lora_A[adapter] = nn.Parameter(torch.empty(spec.r, self.factor_width(), **kw))
        self.lora_E[adapter] = nn.Parameter(torch.empty(spec.r, 1, **kw))
        self.lora_B[adapter] = nn.Parameter(torch.empty(self.out_features, spec.r, **kw))
        # ranknum is a constant that no checkpoint carries, so it is filled in even when loading.
        ranknum = getattr(spec, "ranknum", spec.r)
        kw["device"] = adapter_device(self.get_base_layer(), allow_meta=False)  # a constant: never left on meta
        self.ranknum[adapter] = nn.Parameter(torch.full((1,), float(ranknum), **kw), requires_grad=False)

    def init_weights(self, adapter: str, spec: LoraLayerSpec) -> None:
        """``E = 0`` and ``A, B ~ N(0, 0.02^2)`` (the adapter starts as the identity); ``init=False``: all
        three standard normal (tests)."""
        A, E, B = self.lora_A[adapter], self.lora_E[adapter], self.lora_B[adapter]
        with torch.no_grad():
            if spec.init is False:
                for tensor in (A, E, B):
                    tensor.normal_()
                return
            E.zero_()
            A.normal_(mean=0.0, std=0.02)
            B.normal_(mean=0.0, std=0.02)

    def factor_tensors(self, adapter: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A * E, B)``: LoRA's ``(A, B)`` with the singular values folded into ``A``."""
        return self.lora_A[adapter] * self.lora_E[adapter], self.lora_B[adapter]

    def delta_weight(self, adapter: str) -> torch.Tensor:
        """``s * B (A * E) / (ranknum + eps)`` (LoRA's delta of the folded factors, divided by ``ranknum``)."""
        return super().delta_weight(adapter) / (self.ranknum[adapter] + RANKNUM_EPS)

    def set_scale(self, adapter: str, scale: float) -> None:
        if adapter in self.scaling:
            alpha = self.lora_alpha[adapter]
            self.scaling[adapter] = scale * (alpha if alpha > 0 else self.r[adapter])


class SVDLinear(SVDLayer):
    """AdaLoRA on ``nn.Linear`` / GPT-2 ``Conv1D``: ``x (..., in) -> (..., out)``."""

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool = False) -> None:
        super().__init__(base_layer, fan_in_fan_out)
        shape = weight_shape(self.get_base_layer())
        self.out_features, self.in_features = shape[::-1] if fan_in_fan_out else shape

    def adapt_output(self, result: torch.Tensor, x: torch.Tensor, adapter: str) -> torch.Tensor:
        A, B = self.factor_tensors(adapter)
        x = self.lora_dropout[adapter](x.to(A.dtype))
        ranknum = self.ranknum[adapter] + RANKNUM_EPS
        return result + ((x @ A.T @ B.T) * self.scaling[adapter] / ranknum).to(result.dtype)


class SVDConv(SVDLayer):
    """AdaLoRA on ``nn.Conv2d`` (as PEFT): ``A`` is ``(r, C_in * prod(kernel))`` and the delta kernel
    ``s * B (A * E) / (ranknum + eps)`` reshaped to the base kernel is convolved with the dropped-out input."""

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool = False) -> None:
        super().__init__(base_layer, fan_in_fan_out=False)
        base = self.get_base_layer()
        if base.groups != 1:
            raise UnsupportedError(f"AdaLoRA on grouped convolutions (groups={base.groups}) is not supported.")
        self.in_features, self.out_features = base.in_channels, base.out_channels

    def factor_width(self) -> int:
        return self.in_features * math.prod(self.get_base_layer().kernel_size)

    def delta_weight(self, adapter: str) -> torch.Tensor:
        return super().delta_weight(adapter).view(self.get_base_layer().weight.shape)

    def adapt_output(self, result: torch.Tensor, x: torch.Tensor, adapter: str) -> torch.Tensor:
        kernel = self.delta_weight(adapter)
        x = self.lora_dropout[adapter](x.to(kernel.dtype))
        return result + self.get_base_layer()._conv_forward(x, kernel, None).to(result.dtype)
