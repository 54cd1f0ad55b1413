"""VeRA layer (Kopiczko et al., 2024, arXiv:2310.11454) on ``nn.Linear`` / GPT-2 ``Conv1D``.

For ``x (..., in)``: ``y = base(x) + lambda_b * (B_s (lambda_d * (A_s dropout(x))))`` where ``A_s = vera_A[:, :in]``
``(r, in)`` and ``B_s = vera_B[:out, :]`` ``(out, r)`` are blocks of the model's shared frozen projections, and
``lambda_d (r,)``, ``lambda_b (out,)`` are this layer's trained vectors. The weight update is
``delta W = diag(lambda_b) B_s diag(lambda_d) A_s`` ``(out, in)`` (transposed for ``fan_in_fan_out``), which
merging adds to the base weight and unmerging subtracts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from peftkit.layers.base import AdapterLayer
from peftkit.layers.placement import adapter_device
from peftkit.layers.shared import HOLDER_NAME
from peftkit.merging.merge import update_weight
from peftkit.methods.lora.layer import adapter_dtype
from peftkit.methods.vera.projections import in_out_features


@dataclass(frozen=True)
class VeraLayerSpec:
    """Per-layer facts of a :class:`~peftkit.methods.vera.config.VeraConfig`.

    Attributes:
        r: Rank of the shared projections.
        dropout: Dropout probability on the adapter input.
        d_initial: Initial ``lambda_d`` value (with ``init``).
        init: ``True``: ``lambda_d = d_initial``, ``lambda_b = 0``; ``False``: ``lambda_d ~ N(0, 1)``, ``lambda_b = 1``.
        fan_in_fan_out: The base weight is stored ``(in, out)`` (GPT-2 ``Conv1D``).
    """

    r: int
    dropout: float = 0.0
    d_initial: float = 0.1
    init: bool = True
    fan_in_fan_out: bool = False


class Linear(AdapterLayer):
    """VeRA on a Linear-like base; ``vera_lambda_b`` / ``vera_lambda_d`` are PEFT's state-dict names."""

    repr_prefix = "vera."

    adapter_layer_names = ("vera_lambda_b", "vera_lambda_d")
    other_param_names = ("r", "vera_dropout")

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool = False) -> None:
        super().__init__(base_layer)
        self.fan_in_fan_out = fan_in_fan_out
        self.in_features, self.out_features = in_out_features(self.get_base_layer())
        self.vera_lambda_b = nn.ParameterDict()
        self.vera_lambda_d = nn.ParameterDict()
        self.vera_dropout = nn.ModuleDict()
        self.r: dict[str, int] = {}

    def update_layer(self, adapter: str, facts: VeraLayerSpec, init_weights: bool = True) -> None:
        """Create (or replace) ``adapter``'s vectors ``lambda_b (out,)`` and ``lambda_d (r,)``.

        Args:
            init_weights: ``False`` allocates without initialising (a load overwrites them).
        """
        base = self.get_base_layer()
        device, dtype = adapter_device(base), adapter_dtype(base.weight)
        lambda_b = torch.empty(self.out_features, device=device, dtype=dtype)
        lambda_d = torch.empty(facts.r, device=device, dtype=dtype)
        if init_weights and device.type != "meta":
            with torch.no_grad():
                if facts.init:
                    lambda_b.zero_()
                    lambda_d.fill_(facts.d_initial)
                else:
                    lambda_b.fill_(1.0)
                    lambda_d.normal_()
        self.vera_lambda_b[adapter] = nn.Parameter(lambda_b)
        self.vera_lambda_d[adapter] = nn.Parameter(lambda_d)
        self.vera_dropout[adapter] = nn.Dropout(facts.dropout) if facts.dropout > 0 else nn.Identity()
        self.r[adapter] = facts.r
        if not self._active_adapter:
            self._active_adapter = [adapter]

    @property
    def vera_A(self) -> dict[str, torch.Tensor]:
        """Adapter name -> the whole shared projection ``A (r, max_in)`` this layer reads a block of, for every
        adapter of the model (PEFT's layer attribute): the model's one tensor, the same object in every layer."""
        return self._shared("vera_A")

    @property
    def vera_B(self) -> dict[str, torch.Tensor]:
        """Adapter name -> the whole shared projection ``B (max_out, r)`` (see :attr:`vera_A`)."""
        return self._shared("vera_B")

    def _shared(self, name: str) -> dict[str, torch.Tensor]:
        holder: Any = self._modules.get(HOLDER_NAME)
        if holder is None:
            return {}
        return {adapter: getattr(held, name) for adapter, held in holder.adapters.items()}

    def projections(self, adapter: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A_s (r, in), B_s (out, r))``: this layer's blocks of ``adapter``'s shared projections."""
        holder: Any = self._modules[HOLDER_NAME]  # the SharedTensors the core registered (use_model_tensors)
        held = holder.adapters[adapter]
        return held.vera_A[:, : self.in_features], held.vera_B[: self.out_features, :]

    def adapt_output(self, result: torch.Tensor, x: torch.Tensor, adapter: str) -> torch.Tensor:
        lambda_b, lambda_d = self.vera_lambda_b[adapter], self.vera_lambda_d[adapter]
        vera_A, vera_B = self.projections(adapter)
        h = self.vera_dropout[adapter](x.to(lambda_d.dtype))
        h = F.linear(lambda_d * F.linear(h, vera_A.to(h)), vera_B.to(h))
        return (result + lambda_b * h).to(result.dtype)

    def delta_weight(self, adapter: str) -> torch.Tensor:
        """``diag(lambda_b) B_s diag(lambda_d) A_s`` ``(out, in)``, transposed for ``fan_in_fan_out``; float32
        for half-precision bases on the CPU."""
        lambda_b, lambda_d = self.vera_lambda_b[adapter].detach(), self.vera_lambda_d[adapter].detach()
        vera_A, vera_B = self.projections(adapter)
        dtype = torch.float32 if lambda_b.dtype in (torch.float16, torch.bfloat16) else lambda_b.dtype
        delta = (lambda_b.to(dtype)[:, None] * vera_B.to(lambda_b.device, dtype)) @ (
            lambda_d.to(dtype)[:, None] * vera_A.to(lambda_b.device, dtype)
        )
        return delta.T if self.fan_in_fan_out else delta

    def supports_lora_conversion(self, adapter_name: str = "default") -> bool:
        return True

    def merge_one(self, adapter: str, safe_merge: bool) -> None:
        delta = self.delta_weight(adapter)
        update_weight(self.get_base_layer(), lambda w: w.add_(delta.to(w)), safe=safe_merge, what=adapter)

    def unmerge_one(self, adapter: str) -> None:
        delta = self.delta_weight(adapter)
        update_weight(self.get_base_layer(), lambda w: w.sub_(delta.to(w)))
