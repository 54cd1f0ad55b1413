"""LoRA on ``nn.Conv1d/2d/3d``: ``A`` is a convolution with the base kernel, stride, padding and dilation
(``r`` output channels) and ``B`` a 1x1 convolution back to the output channels, so

    y = conv(x, W) + s * conv_1x1(conv(x, A), B),   delta kernel = s * B_flat @ A_flat  (out, in, *k).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from peftkit.errors import UnsupportedError
from peftkit.layers.placement import adapter_device
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
        if spec.use_dora:
            raise UnsupportedError("DoRA on convolution layers is not implemented in peftkit; target Linear layers.")
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

    def adapt_output(self, result: torch.Tensor, x: torch.Tensor, adapter: str) -> torch.Tensor:
        A, B = self.lora_A[adapter], self.lora_B[adapter]
        x = self.lora_dropout[adapter](x).to(A.weight.dtype)
        return result + (B(A(x)) * self.scaling[adapter]).to(result.dtype)
