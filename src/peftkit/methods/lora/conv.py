"""LoRA on ``nn.Conv1d/2d/3d``: ``A`` is a convolution with the base kernel, stride, padding and dilation
(``r`` output channels) and ``B`` a 1x1 convolution back to the output channels, so

    y = conv(x, W) + s * conv_1x1(conv(x, A), B),   delta kernel = s * B_flat @ A_flat  (out, in, *k).

DoRA (Liu et al., 2024) normalises per output channel: ``n_o = ||W_o + delta_o||`` over ``(in, *k)`` (detached),
magnitude ``m`` stored as ``(1, out, 1, ...)`` (PEFT's shape), and
``y = (m / n) * (conv(x, W) + s * conv_1x1(conv(x, A), B)) + bias``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from peftkit.errors import UnsupportedError
from peftkit.layers.placement import adapter_device
from peftkit.methods.lora.dora import dora_combine
from peftkit.methods.lora.layer import LoraLayer, LoraLayerSpec, adapter_dtype


class Conv(LoraLayer):
    """LoRA on an N-d convolution; ``x (N, C_in, *spatial) -> (N, C_out, *spatial')``."""

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool = False) -> None:
        super().__init__(base_layer, fan_in_fan_out=False)
        base = self.get_base_layer()
        if base.groups != 1:
            raise UnsupportedError(f"LoRA on grouped convolutions (groups={base.groups}) is not supported.")
        self.in_features, self.out_features = base.in_channels, base.out_channels

    def create_weights(self, adapter: str, spec: LoraLayerSpec) -> None:
        base = self.get_base_layer()
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
        self.lora_B[adapter] = conv_cls(spec.r, self.out_features, ones, ones, bias=spec.lora_bias, **kw)

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
