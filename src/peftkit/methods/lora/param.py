"""LoRA on a parameter rather than a module (``LoraConfig(target_parameters=[...])``): the fused expert weights of
mixture-of-experts models (transformers 5 stores them as one ``nn.Parameter`` of shape ``(E, out, in)``, or
``(E, in, out)`` where the experts module sets ``is_transposed``), which no ``nn.Linear`` wraps.

Each expert ``e`` gets its own rank-``r`` update, all held in two ``nn.Linear`` factors as PEFT stores them:
``lora_A.weight (r E, in)`` read as ``(E, r, in)`` (rows ``e r .. e r + r - 1``) and ``lora_B.weight (out, r E)``
read as ``(out, r, E)`` (column ``j E + e`` is rank ``j`` of expert ``e``), so

    delta[e] = s * B[:, :, e] @ A[e]          (out, in), transposed for an (E, in, out) parameter.

A 2-D parameter ``(out, in)`` is one expert. The base module runs with its parameter replaced by
``W + sum of the active adapters' deltas`` for the call (one fused ``baddbmm`` per adapter; gradients reach
``A`` and ``B``). Several targeted parameters of one module nest: each wrapper's ``base_layer`` is the
previous wrapper (the first parameter in the module's registration order innermost), as in PEFT, which fixes
the state-dict keys (``experts.base_layer.lora_A...`` for the inner one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from peftkit.errors import ConfigError, UsageError
from peftkit.layers.base import BatchRouting
from peftkit.layers.weight_swap import SWAP_LOCK, swapped_tensors
from peftkit.merging.merge import MergeError
from peftkit.methods.lora.init import is_weight_decomposing
from peftkit.methods.lora.layer import LoraLayer, LoraLayerSpec, adapter_dtype, empty_linear


class ParamWrapper(LoraLayer):
    """LoRA on parameter ``parameter_name`` of the innermost base module (one LoRA per expert).

    Args:
        base_layer: The module holding the parameter, or another ``ParamWrapper`` of it.
        parameter_name: The parameter's attribute name (``"gate_up_proj"``).

    Raises:
        ConfigError: the parameter is missing or not 2-D / 3-D.
    """

    parameter_name: str
    num_experts: int
    is_transposed: bool

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool = False, parameter_name: str = "") -> None:
        super().__init__(base_layer, fan_in_fan_out=False)
        self.parameter_name = parameter_name
        param = self.get_param()
        if param.dim() == 3:
            transposed = bool(getattr(self.get_base_layer(), "is_transposed", False))
            experts, out_features, in_features = (param.shape[0], *param.shape[1:][:: -1 if transposed else 1])
        elif param.dim() == 2:
            (out_features, in_features), experts, transposed = param.shape, 1, False
        else:
            raise ConfigError(
                f"target_parameters: {parameter_name!r} has shape {tuple(param.shape)}; LoRA adapts 2-D (out, in) "
                "and 3-D (experts, out, in) parameters only."
            )
        self.__dict__.update(
            num_experts=experts, in_features=in_features, out_features=out_features, is_transposed=transposed
        )

    def get_param(self) -> torch.Tensor:
        """The wrapped parameter (on the innermost base module)."""
        return getattr(self.get_base_layer(), self.parameter_name)

    def update_layer(self, adapter: str, spec: LoraLayerSpec, init_weights: bool = True) -> None:
        """Add ``adapter``; refuses what PEFT's parameter LoRA refuses (see :func:`check_parameter_spec`)."""
        check_parameter_spec(spec, self.parameter_name)
        super().update_layer(adapter, spec, init_weights)

    def create_weights(self, adapter: str, spec: LoraLayerSpec) -> None:
        """``lora_A (r E, in)`` and ``lora_B (out, r E)``, uninitialised, in the adapter dtype of the parameter."""
        param = self.get_param()
        kw: dict[str, Any] = {"device": param.device, "dtype": adapter_dtype(param)}
        rank = spec.r * self.num_experts
        self.lora_A[adapter] = empty_linear(self.in_features, rank, bias=False, **kw)
        self.lora_B[adapter] = empty_linear(rank, self.out_features, bias=False, **kw)

    def low_rank_factors(self, adapter: str, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lhs, rhs)`` with ``delta = s * lhs @ rhs`` shaped like the parameter, in ``dtype`` (default: the
        adapter's): ``(E, out, r) @ (E, r, in)``; ``(E, in, r) @ (E, r, out)`` for an ``(E, in, out)``
        parameter; ``(out, r) @ (r, in)`` in 2-D."""
        A, B = self.factor_tensors(adapter)
        dtype = dtype or A.dtype
        if self.get_param().dim() == 2:
            return B.to(dtype), A.to(dtype)
        per_A = A.reshape(self.num_experts, -1, A.shape[-1]).to(dtype)  # (E, r, in)
        per_B = B.reshape(B.shape[0], -1, self.num_experts).permute(2, 0, 1).to(dtype)  # (E, out, r)
        return (per_A.transpose(1, 2), per_B.transpose(1, 2)) if self.is_transposed else (per_B, per_A)

    def delta_weight(self, adapter: str) -> torch.Tensor:
        """``s * B_e @ A_e`` per expert, shaped like the parameter (see the module docstring)."""
        lhs, rhs = self.low_rank_factors(adapter)
        return torch.matmul(lhs, rhs) * self.scaling[adapter]

    def adapted_weight(self, adapters: Sequence[str]) -> torch.Tensor:
        """``W + sum_a s_a lhs_a @ rhs_a``, one fused ``baddbmm`` / ``addmm`` per adapter (no separate delta)."""
        weight = self.get_param()
        for adapter in adapters:
            lhs, rhs = self.low_rank_factors(adapter, weight.dtype)
            scaling = self.scaling[adapter]
            if torch.is_tensor(scaling):  # held as a tensor for hot-swaps (alpha takes Python numbers only)
                lhs, scaling = lhs * scaling, 1.0
            fused = torch.baddbmm if weight.dim() == 3 else torch.addmm
            weight = fused(weight, lhs, rhs, alpha=scaling)
        return weight

    def adapted_forward(self, x: torch.Tensor, adapters: Sequence[str], *args: Any, **kwargs: Any) -> torch.Tensor:
        """The base module's forward with the parameter replaced by :meth:`adapted_weight` for the call.

        The replacement goes straight into the holder's parameter table (and FSDP's view of it, see
        :mod:`peftkit.layers.weight_swap`) and is undone afterwards (what ``torch.func.functional_call`` does,
        without walking every parameter of the module on each call); nested
        wrappers each replace their own parameter. Forwards through parameter layers take turns (one process-wide
        re-entrant lock), so concurrent forwards of one model from several threads stay correct.
        """
        with SWAP_LOCK:  # taken before reading the weight: another thread's swapped-in tensor must not be read
            with swapped_tensors([(self.get_base_layer(), self.parameter_name, self.adapted_weight(adapters))]):
                return self.base_layer(x, *args, **kwargs)

    def mixed_forward(self, x: torch.Tensor, routing: BatchRouting, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Refused (as in PEFT): :class:`UsageError`."""
        raise UsageError(
            f"LoRA on the parameter {self.parameter_name!r} cannot serve a mixed batch (adapter_names=...): the "
            "module's other inputs (e.g. expert routing) cannot be split per sample. Run one adapter at a time."
        )

    def merge_one(self, adapter: str, safe_merge: bool) -> None:
        """``W += delta`` in place (checked for NaN/Inf first with ``safe_merge``)."""
        self._add(adapter, 1.0, safe_merge)

    def unmerge_one(self, adapter: str) -> None:
        """``W -= delta`` in place."""
        self._add(adapter, -1.0, False)

    def _add(self, adapter: str, sign: float, safe: bool) -> None:
        param = self.get_param()
        with torch.no_grad():
            delta = self.delta_weight(adapter).to(param.dtype)
            if safe and not torch.isfinite(param + sign * delta).all():
                raise MergeError(f"Merging {adapter} would write NaN/Inf into {self.parameter_name}; it is broken.")
            param.add_(delta, alpha=sign)

    def extra_repr(self) -> str:
        """The parameter, the number of experts and the adapters."""
        return f"parameter_name={self.parameter_name!r}, experts={self.num_experts}, {super().extra_repr()}"


def check_parameter_spec(spec: LoraLayerSpec, parameter_name: str) -> None:
    """Options that cannot apply to a bare parameter: no input to drop out, no bias, no DoRA, no decomposing init,
    no LoRA variant (their forward needs the layer input).

    Raises:
        ConfigError: naming the option and the parameter.
    """
    refused = {
        "lora_dropout != 0": spec.dropout > 0,
        "fan_in_fan_out": spec.fan_in_fan_out,
        "lora_bias": spec.lora_bias,
        "use_dora": spec.use_dora,
        f"init_lora_weights={spec.init!r}": is_weight_decomposing(spec.init),
        f"the {getattr(spec.variant, 'name', '')} LoRA variant": spec.variant is not None,
    }
    bad = [name for name, on in refused.items() if on]
    if bad:
        raise ConfigError(
            f"LoRA on the parameter {parameter_name!r} (target_parameters) does not work with {', '.join(bad)}; "
            "turn it off or target modules instead."
        )
