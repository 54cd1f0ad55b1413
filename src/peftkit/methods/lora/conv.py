"""LoRA on ``nn.Conv1d/2d/3d``: ``A`` is a convolution with the base kernel, stride, padding and dilation
(``r`` output channels) and ``B`` a 1x1 convolution back to the output channels, so

    y = conv(x, W) + s * conv_1x1(conv(x, A), B),   delta kernel = s * B_flat @ A_flat  (out, in, *k).

DoRA (Liu et al., 2024) normalises per output channel: ``n_o = ||W_o + delta_o||`` over ``(in, *k)`` (detached),
magnitude ``m`` stored as ``(1, out, 1, ...)`` (PEFT's shape), and
``y = (m / n) * (conv(x, W) + s * conv_1x1(conv(x, A), B)) + bias``.

Grouped convolutions (``groups = g > 1``), as PEFT 0.21.2 builds them: ``A (r, in, *k)`` still reads every input
channel, ``B (out, r / g, 1, ...)`` is a grouped 1x1 convolution (so ``r`` must be a multiple of ``g``). The
adapter's kernel then couples input channels across groups, which a grouped base kernel ``(out, in / g, *k)``
cannot hold: such an adapter cannot be merged (refused, as in PEFT). DoRA's norm uses PEFT's reading of the
factors, ``reshape(B, (-1, r)) @ reshape(A, (r, -1))`` laid out as the base kernel (the true delta when ``g = 1``),
so that DoRA adapters give the same outputs in both libraries.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from peftkit.errors import ConfigError, UnsupportedError
from peftkit.layers.placement import adapter_device
from peftkit.methods.lora.dora import dora_combine, row_norm
from peftkit.methods.lora.layer import LoraLayer, LoraLayerSpec, adapter_dtype
from peftkit.quant.base import dense_weight


class Conv(LoraLayer):
    """LoRA on an N-d convolution; ``x (N, C_in, *spatial) -> (N, C_out, *spatial')``."""

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool = False) -> None:
        super().__init__(base_layer, fan_in_fan_out=False)
        base = self.get_base_layer()
        self.in_features, self.out_features = base.in_channels, base.out_channels
        self.rank_groups = int(base.groups)  # A's rows in per-group blocks, B (grouped) reads its group's block

    @property
    def groups(self) -> int:
        """The base convolution's ``groups``."""
        return int(self.get_base_layer().groups)

    def create_weights(self, adapter: str, spec: LoraLayerSpec) -> None:
        """``A``: the base kernel's shape with ``r`` output channels; ``B``: a 1x1 convolution with the base's groups.

        Raises:
            ConfigError: ``r`` is not a multiple of the base's ``groups``.
        """
        base = self.get_base_layer()
        if spec.r % self.groups:
            raise ConfigError(
                f"LoRA rank r={spec.r} on a {type(base).__name__} with groups={self.groups}: the rank must be a "
                "multiple of groups (the adapter's B is a grouped convolution). Pick such a rank (rank_pattern) or "
                "leave this layer out of target_modules."
            )
        if self.groups > 1:
            warnings.warn(
                f"LoRA on a {type(base).__name__} with groups={self.groups} runs unmerged only: its update mixes "
                "the groups, so merge / merge_and_unload will refuse this layer.",
                UserWarning,
                stacklevel=2,
            )
        conv_cls = type(base) if type(base) in (nn.Conv1d, nn.Conv2d, nn.Conv3d) else nn.Conv2d
        kw: dict[str, Any] = {"device": adapter_device(base), "dtype": adapter_dtype(base.weight)}
        self.lora_A[adapter] = conv_cls(
            self.in_features,
            spec.r,
            base.kernel_size,
            base.stride,
            base.padding,
            base.dilation,
            bias=False,
            padding_mode=base.padding_mode,
            **kw,
        )
        ones: Any = (1,) * len(base.kernel_size)  # a 1x1(x1) kernel of the base conv's dimension
        self.lora_B[adapter] = conv_cls(
            spec.r, self.out_features, ones, ones, groups=self.groups, bias=spec.lora_bias, **kw
        )

    def delta_weight(self, adapter: str) -> torch.Tensor:
        """``s * B_flat @ A_flat`` laid out as the base kernel ``(out, in, *k)``.

        Raises:
            UnsupportedError: a grouped base (``groups > 1``): the update is no grouped kernel.
        """
        if self.groups > 1:
            raise UnsupportedError(
                f"LoRA on a convolution with groups={self.groups} has no weight delta of the base kernel's shape "
                "(its update mixes the groups), so it cannot be merged; keep this adapter unmerged."
            )
        return super().delta_weight(adapter)

    def check_mergeable(self, adapter: str) -> None:
        """Raises :class:`UnsupportedError` for a grouped base (see :meth:`delta_weight`), then the LoRA checks."""
        if self.groups > 1 and adapter in self.lora_A:
            self.delta_weight(adapter)  # raises
        super().check_mergeable(adapter)

    def dora_norm(self, adapter: str, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Per-output-channel norm ``||W + s * reshape(B, (-1, r)) @ reshape(A, (r, -1))||`` (detached), ``(out,)``;
        the product is the delta kernel when ``groups == 1`` (see the module docstring for ``groups > 1``)."""
        base_weight = dense_weight(self.get_base_layer()) if weight is None else weight
        A, B = (t.detach() for t in self.factor_tensors(adapter))
        r = A.shape[0]
        paired = (B.reshape(-1, r) @ A.reshape(r, -1)).reshape(base_weight.shape) * self.scaling[adapter]
        return row_norm(base_weight.to(paired.dtype), paired).detach()

    def magnitude_shape(self) -> tuple[int, ...]:
        """``(1, out, 1, ...)``: the DoRA magnitude broadcasts over the activations ``(N, out, *spatial)``."""
        return (1, self.out_features, *(1,) * (self.weight.dim() - 2))

    def adapt_output(self, result: torch.Tensor, x: torch.Tensor, adapter: str) -> torch.Tensor:
        A, B = self.lora_A[adapter], self.lora_B[adapter]
        dropout = self.lora_dropout[adapter]
        dropped = dropout(x).to(A.weight.dtype)
        lora = B(A(dropped)) * self.scaling[adapter]
        if not self.use_dora.get(adapter):
            return result + lora.to(result.dtype)
        base = self.get_base_layer()
        if isinstance(dropout, nn.Identity) or not self.training:
            bias = base.bias
            base_no_bias = result if bias is None else result - bias.view(1, -1, *(1,) * (result.dim() - 2))
        else:  # the base term on the same dropped-out input as the adapter (PEFT's choice)
            base_no_bias = base._conv_forward(dropped.to(base.weight.dtype), base.weight, None)
        magnitude = self.lora_magnitude_vector[adapter].weight.flatten()  # type: ignore[operator]  # a DoraMagnitude
        norm = self.dora_norm(adapter)
        out = dora_combine(result.to(lora.dtype), base_no_bias.to(lora.dtype), lora, magnitude, norm, channel_dim=1)
        return out.to(result.dtype)
