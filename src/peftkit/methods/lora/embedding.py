"""LoRA on ``nn.Embedding``: ``y = E[x] + s * (A^T[x] @ B^T)``.

``A = lora_embedding_A (r, num_embeddings)`` starts at zero and ``B = lora_embedding_B (dim, r)`` is
normal, the reverse of the Linear case, because a row lookup in ``A^T`` replaces the first matmul.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from peftkit.errors import UnsupportedError
from peftkit.layers.placement import adapter_device
from peftkit.methods.lora.layer import LoraLayer, LoraLayerSpec, adapter_dtype


class Embedding(LoraLayer):
    """LoRA on an embedding table; token ids ``(...)`` -> ``(..., dim)``."""

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool = False) -> None:
        super().__init__(base_layer, fan_in_fan_out=False)
        self.in_features, self.out_features = self.get_base_layer().weight.shape

    def create_weights(self, adapter: str, spec: LoraLayerSpec) -> None:
        if spec.use_dora:
            raise UnsupportedError("DoRA on embedding layers is not implemented in peftkit; target Linear layers.")
        if spec.lora_bias:
            raise UnsupportedError("lora_bias=True is not supported on embedding layers.")
        weight = self.get_base_layer().weight
        kw: dict[str, Any] = {"device": adapter_device(self.get_base_layer()), "dtype": adapter_dtype(weight)}
        self.lora_embedding_A[adapter] = nn.Parameter(torch.empty(spec.r, self.in_features, **kw))
        self.lora_embedding_B[adapter] = nn.Parameter(torch.empty(self.out_features, spec.r, **kw))

    def init_weights(self, adapter: str, spec: LoraLayerSpec) -> None:
        A, B = self.factor_tensors(adapter)
        with torch.no_grad():
            if spec.init is False:
                A.normal_()
                B.normal_()
            elif spec.init == "gaussian" or spec.init is True:
                A.zero_()
                B.normal_()
            else:
                raise UnsupportedError(f"init_lora_weights={spec.init!r} is not supported on embedding layers.")

    def factor_tensors(self, adapter: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lora_embedding_A[adapter], self.lora_embedding_B[adapter]

    def delta_weight(self, adapter: str) -> torch.Tensor:
        """``s * (B @ A)^T``, shaped like the table ``(num_embeddings, dim)``."""
        A, B = self.factor_tensors(adapter)
        return (B @ A).T * self.scaling[adapter]

    def adapt_output(self, result: torch.Tensor, x: torch.Tensor, adapter: str) -> torch.Tensor:
        base = self.get_base_layer()
        A, B = self.factor_tensors(adapter)
        rows = F.embedding(
            x,
            A.T,
            padding_idx=base.padding_idx,
            max_norm=base.max_norm,
            norm_type=base.norm_type,
            scale_grad_by_freq=base.scale_grad_by_freq,
            sparse=base.sparse,
        )
        return result + ((rows @ B.T) * self.scaling[adapter]).to(result.dtype)
