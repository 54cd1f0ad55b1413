"""LoRA on ``nn.Embedding``: ``y = E[x] + s * (A^T[x] @ B^T)`` (both terms times ``embed_scale`` for scaled
embeddings such as Gemma's).

``A = lora_embedding_A (r, num_embeddings)`` starts at zero and ``B = lora_embedding_B (dim, r)`` is
normal, the reverse of the Linear case, because a row lookup in ``A^T`` replaces the first matmul.

DoRA (Liu et al., 2024) here normalises the table per embedding feature (PEFT's choice): with
``E' = E + s (B A)^T`` and ``n_d = ||E'[:, d]||`` (detached), the magnitude ``m (dim,)`` gives
``y = (m / n) * E'[x]``; merging writes ``(m / n)[None, :] * E'``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from peftkit.errors import UnsupportedError
from peftkit.layers.placement import adapter_device
from peftkit.methods.lora.dora import dora_combine, row_norm
from peftkit.methods.lora.layer import LoraLayer, LoraLayerSpec, adapter_dtype
from peftkit.methods.lora.mica import init_mica_
from peftkit.quant.base import dense_weight


class Embedding(LoraLayer):
    """LoRA on an embedding table; token ids ``(...)`` -> ``(..., dim)``."""

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool = False) -> None:
        super().__init__(base_layer, fan_in_fan_out=False)
        self.in_features, self.out_features = self.get_base_layer().weight.shape

    def create_weights(self, adapter: str, spec: LoraLayerSpec) -> None:
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
            elif spec.init in ("gaussian", "lora_ga", "corda", "eva") or spec.init is True:  # as PEFT: Linear only
                A.zero_()
                B.normal_()
            elif spec.init == "mica":  # the projection is the table's transpose (dim, num)
                init_mica_(A, B, dense_weight(self.get_base_layer()).T, spec.r)
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
        delta = (rows @ B.T) * self.scaling[adapter]
        scale = self.embed_scale()
        if scale is not None:  # the base multiplies its lookup by it, so the table's delta goes through it too
            delta = delta * scale.to(delta.dtype)
        if self.use_dora.get(adapter):  # (m / n) * (E[x] + delta): no bias, so the base output is its own "no bias"
            magnitude, norm = self.lora_magnitude_vector[adapter].weight, self.dora_norm(adapter)
            return dora_combine(result.to(delta.dtype), result.to(delta.dtype), delta, magnitude, norm).to(result.dtype)  # type: ignore[arg-type]  # a DoraMagnitude
        return result + delta.to(result.dtype)

    def dora_norm(self, adapter: str, weight: torch.Tensor | None = None) -> torch.Tensor:
        """``||E + s (B A)^T||`` per embedding feature (column of the table), detached: shape ``(dim,)``."""
        table = dense_weight(self.get_base_layer()) if weight is None else weight
        delta = self.delta_weight(adapter).detach()
        return row_norm(table.T.to(delta.dtype), delta.T).detach()

    def _dora_factor(self, adapter: str, norm: torch.Tensor) -> torch.Tensor:
        """``m / n`` as a row ``(1, dim)`` that scales the table's columns."""
        return super()._dora_factor(adapter, norm).view(1, -1)

    def embed_scale(self) -> torch.Tensor | None:
        """The factor a scaled embedding multiplies its lookup by (Gemma's ``embed_scale = sqrt(hidden_size)``),
        as a 0-d tensor, or ``None`` for a plain ``nn.Embedding``.

        The unmerged output must be ``(E[x] + s A^T[x] B^T) * embed_scale`` to equal the merged table's
        ``(E + ΔE)[x] * embed_scale``.

        Raises:
            UnsupportedError: ``embed_scale`` is not a single number (its broadcast would be a guess).
        """
        scale = getattr(self.get_base_layer(), "embed_scale", None)
        if scale is None:
            return None
        if isinstance(scale, (int, float)):
            return torch.tensor(float(scale))
        if isinstance(scale, torch.Tensor) and scale.numel() == 1:
            return scale.reshape(())
        raise UnsupportedError(
            f"{type(self.get_base_layer()).__name__}.embed_scale has shape {tuple(getattr(scale, 'shape', ()))}; "
            "LoRA on an embedding supports a single scale factor only."
        )
