"""LoRA layers (Hu et al., 2021): ``y = base(x) + s * B(A(dropout(x)))`` with ``s = alpha / r``
(``alpha / sqrt(r)`` for rsLoRA).

:class:`LoraLayer` holds what every LoRA layer shares (per-adapter dicts, scaling, trainability);
:class:`Linear` covers ``nn.Linear`` and transformers' ``Conv1D`` (``fan_in_fan_out``), with DoRA. This file
is the readable formula (the reference); the fast paths (fused autograd, single adapter, stacked mixed batches,
compiled) live in ``fast_paths.py``, the scaling in ``scaling.py``, embedding and convolution layers in
``embedding.py`` and ``conv.py``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from peftkit.errors import MergeError, PeftWarning
from peftkit.layers.base import AdapterLayer, BatchRouting
from peftkit.layers.fresh import new_module, set_child
from peftkit.layers.placement import adapter_device, base_weight, onloaded
from peftkit.layers.state import AdapterStatus
from peftkit.merging.merge import require_finite_sum, update_weight
from peftkit.methods.lora import compiled_factors, fast_paths
from peftkit.methods.lora.dora import DoraMagnitude, dora_output, merge_update, row_norm, unmerge_step, unmerged_weight
from peftkit.methods.lora.init import decompose_weight, is_weight_decomposing
from peftkit.methods.lora.layer_spec import LoraLayerSpec
from peftkit.methods.lora.loraga_init import init_lora_ga_
from peftkit.methods.lora.named_init import frozen_tensor_ids, init_factors
from peftkit.methods.lora.scaling import lora_scaling
from peftkit.methods.lora.variant import LoraVariant
from peftkit.quant.base import dense_weight, weight_shape


def adapter_dtype(weight: torch.Tensor) -> torch.dtype:
    """Adapters train in float32 on half-precision or quantized bases, else in the base dtype."""
    return weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32


def empty_linear(
    in_features: int, out_features: int, bias: bool, device: torch.device, dtype: torch.dtype
) -> nn.Linear:
    """An ``nn.Linear`` with uninitialised tensors (its constructor's Kaiming init would be overwritten anyway:
    by the LoRA initialisation, or by a load), built field by field as ``nn.Linear.__init__`` would leave it minus
    ``reset_parameters``: injection makes two per adapted layer, and ``nn.Module.__setattr__`` would be a visible
    share of a load's time."""
    kw: dict[str, Any] = {"device": device, "dtype": dtype}
    layer = new_module(nn.Linear, in_features=in_features, out_features=out_features)
    as_parameter = torch.Tensor._make_subclass  # what ``nn.Parameter(t)`` does for a plain tensor, minus a frame
    layer._parameters["weight"] = as_parameter(nn.Parameter, torch.empty((out_features, in_features), **kw), True)
    layer._parameters["bias"] = as_parameter(nn.Parameter, torch.empty(out_features, **kw), True) if bias else None
    return layer


def dropout_module(p: float) -> nn.Module:
    """``nn.Dropout(p)`` for ``p > 0``, else ``nn.Identity()`` (PEFT's ``lora_dropout`` entries), built cheaply."""
    if p > 1:
        return nn.Dropout(p)  # torch's own error for an invalid probability
    return new_module(nn.Dropout, p=p, inplace=False) if p > 0 else new_module(nn.Identity)


class LoraLayer(AdapterLayer):
    """State shared by all LoRA layers; attribute names match PEFT's state-dict keys."""

    repr_prefix: ClassVar[str] = "lora."

    adapter_layer_names: ClassVar[tuple[str, ...]] = (
        "lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector",
    )  # fmt: skip
    other_param_names: ClassVar[tuple[str, ...]] = (
        "r", "lora_alpha", "scaling", "lora_dropout", "use_dora", "use_rslora",
        "frozen_peft_weight_names", "lora_variant",
    )  # fmt: skip

    in_features: int
    out_features: int
    rank_groups: int = 1  # blocks of A's rows, B's columns per block: a grouped convolution's groups (conv.py)
    fan_in_fan_out: bool
    r: dict[str, int]
    lora_alpha: dict[str, float]
    scaling: dict[str, float]
    use_rslora: dict[str, bool]
    use_dora: dict[str, bool]
    #: Per adapter, the names of its tensors that never train (MiCA's ``lora_B`` / ``lora_embedding_B``; PEFT's
    #: attribute): :meth:`frozen_adapter_tensors` keeps them out of ``requires_grad``.
    frozen_peft_weight_names: dict[str, tuple[str, ...]]
    lora_variant: dict[str, LoraVariant]  # adapters of a LoRA variant (variant.py); PEFT's attribute
    _dora_norms: dict[str, torch.Tensor]
    lora_dropout: nn.ModuleDict
    lora_A: nn.ModuleDict
    lora_B: nn.ModuleDict
    lora_embedding_A: nn.ParameterDict
    lora_embedding_B: nn.ParameterDict
    lora_magnitude_vector: nn.ModuleDict

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool = False) -> None:
        super().__init__(base_layer)
        # Registered in bulk (what plain assignment does, minus ``nn.Module.__setattr__``'s checks, which cost
        # more than the rest of building a layer: a 1B model has hundreds of them).
        self.__dict__.update(
            fan_in_fan_out=fan_in_fan_out,
            r={},
            lora_alpha={},
            scaling={},
            use_rslora={},
            use_dora={},
            _dora_norms={},
            frozen_peft_weight_names={},
            lora_variant={},
        )
        self._modules.update(
            lora_dropout=new_module(nn.ModuleDict),
            lora_A=new_module(nn.ModuleDict),
            lora_B=new_module(nn.ModuleDict),
            lora_embedding_A=new_module(nn.ParameterDict),
            lora_embedding_B=new_module(nn.ParameterDict),
            lora_magnitude_vector=new_module(nn.ModuleDict),
        )

    def update_layer(self, adapter: str, spec: LoraLayerSpec, init_weights: bool = True) -> None:
        """Create (or replace) adapter ``adapter`` with the facts in ``spec``.

        Args:
            init_weights: ``False`` allocates without initialising, for weights a load will overwrite.
        """
        self.r[adapter] = spec.r
        self.lora_alpha[adapter] = spec.alpha
        self.scaling[adapter] = spec.scaling
        self.use_rslora[adapter] = spec.use_rslora
        self.use_dora[adapter] = spec.use_dora
        modules: Any = self._modules  # the registered containers directly (typed by the class annotations)
        set_child(modules["lora_dropout"], adapter, dropout_module(spec.dropout))
        if spec.lora_bias and getattr(self.get_base_layer(), "bias", None) is None:
            warnings.warn(
                f"lora_bias=True on a {type(self.get_base_layer()).__name__} without a bias: adapter {adapter!r} "
                "trains and runs, but cannot be merged into this layer.",
                PeftWarning,
                stacklevel=2,
            )
        self.create_weights(adapter, spec)
        if spec.init == "mica":  # B keeps the minor directions; only A trains
            B_name = "lora_B" if adapter in self.lora_B else "lora_embedding_B"
            self.frozen_peft_weight_names[adapter] = (B_name,)
        if init_weights:
            self.init_weights(adapter, spec)
        if spec.use_dora:
            empty = torch.empty(self.out_features, device=adapter_device(self.get_base_layer()))
            with onloaded(self.get_base_layer(), write_back=False):  # the norm reads an offloaded base's weight
                magnitude = self.dora_norm(adapter) if init_weights else empty
            dtype = self.factor_tensors(adapter)[0].dtype
            self.lora_magnitude_vector[adapter] = DoraMagnitude(magnitude.to(dtype).view(self.magnitude_shape()))
        if spec.variant is not None:
            self.lora_variant[adapter] = spec.variant
            spec.variant.init(self, adapter, spec)
        else:
            self.lora_variant.pop(adapter, None)
        if not self._active_adapter:
            object.__setattr__(self, "_active_adapter", [adapter])  # a plain list or a subclass's property

    def create_weights(self, adapter: str, spec: LoraLayerSpec) -> None:
        """Allocate the adapter's ``A`` and ``B`` (uninitialised)."""
        raise NotImplementedError

    def init_weights(self, adapter: str, spec: LoraLayerSpec) -> None:
        """Initialise ``A``/``B`` per ``spec.init``; PiSSA/OLoRA/LoRA-GA also rewrite the base weight (LoRA-GA
        without its gradient initialises as ``True``)."""
        if spec.init == "lora_ga" and init_lora_ga_(self, adapter, spec):
            return
        A, B = self.factor_tensors(adapter)
        if not is_weight_decomposing(spec.init):
            init_factors(A, B, spec.init, spec.r, self.get_base_layer(), self.fan_in_fan_out)
            factor_b = self._modules["lora_B"]._modules.get(adapter)  # type: ignore[union-attr]  # a registered ModuleDict
            bias = getattr(factor_b, "bias", None) if factor_b is not None else None
            if bias is not None:
                with torch.no_grad():
                    bias.zero_()
            return
        base = self.get_base_layer()
        dense = dense_weight(base)
        weight = dense.T if self.fan_in_fan_out else dense
        new_A, new_B, residual = decompose_weight(weight, str(spec.init), spec.r, spec.scaling, base, spec.init_options)
        residual = residual.T if self.fan_in_fan_out else residual
        with torch.no_grad():
            A.copy_(new_A.view_as(A))
            B.copy_(new_B.view_as(B))
        update_weight(base, lambda w: w.copy_(residual.to(w.dtype)))  # requantized on a quantized base

    def redo_base_rewrite(self, adapter: str, init: str, init_options: Any = None) -> None:
        """Rewrite the base weight as the PiSSA / OLoRA initialisation ``init`` would, keeping the adapter's
        current (loaded) ``A`` and ``B``; see :func:`~peftkit.methods.lora.method.redo_decomposing_init`."""
        A, B = self.factor_tensors(adapter)
        loaded = A.detach().clone(), B.detach().clone()
        spec = LoraLayerSpec(self.r[adapter], self.lora_alpha[adapter], init=init, use_rslora=self.use_rslora[adapter],
                             init_options=init_options)  # fmt: skip
        self.init_weights(adapter, spec)
        with torch.no_grad():
            A.copy_(loaded[0])
            B.copy_(loaded[1])

    def frozen_adapter_tensors(self) -> set[int]:
        """Ids of adapter tensors that stay frozen whatever the adapter state (MiCA's ``B``)."""
        return frozen_tensor_ids(self, self.frozen_peft_weight_names)

    def factor_tensors(self, adapter: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, B)`` as tensors: ``A (r, in, ...)``, ``B (out, r, ...)``."""
        modules = self._modules  # the per-adapter dicts directly: this runs for every layer of a load
        return base_weight(modules["lora_A"]._modules[adapter]), base_weight(modules["lora_B"]._modules[adapter])  # type: ignore[union-attr, arg-type]  # lora_A/lora_B are registered ModuleDicts of factor modules

    def delta_weight(self, adapter: str) -> torch.Tensor:
        """``s * B @ A`` shaped like the base weight (transposed for ``fan_in_fan_out``), or a variant's."""
        variant = self.lora_variant.get(adapter)
        delta = None if variant is None else variant.delta_weight(self, adapter)
        return self.plain_delta_weight(adapter) if delta is None else delta

    def plain_delta_weight(self, adapter: str) -> torch.Tensor:
        A, B = self.factor_tensors(adapter)
        delta = (B.flatten(1) @ A.flatten(1)).view(B.shape[0], *A.shape[1:]) * self.scaling[adapter]
        return delta.T if self.fan_in_fan_out else delta

    # PEFT's public name for the same thing.
    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        return self.delta_weight(adapter)

    def magnitude_shape(self) -> tuple[int, ...]:
        """Shape of the DoRA magnitude as PEFT stores it: ``(out,)`` (convolutions: ``(1, out, 1, ...)``)."""
        return (self.out_features,)

    def dora_norm(self, adapter: str, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Row norm ``||W + s B A||`` (detached), shape ``(out,)``; ``W``: ``weight`` or the base layer's weight."""
        weight, delta = dense_weight(self.get_base_layer()) if weight is None else weight, self.delta_weight(adapter)
        weight, delta = (weight.T, delta.T) if self.fan_in_fan_out else (weight, delta)
        return row_norm(weight.to(delta.dtype), delta.detach()).detach()

    def set_scale(self, adapter: str, scale: float) -> None:
        """Set the scaling of ``adapter`` to ``scale`` times its initial one (``alpha / r``, or ``alpha / sqrt(r)``
        for rsLoRA); layers without ``adapter`` are left alone."""
        if adapter in self.scaling:
            rslora = self.use_rslora.get(adapter, False)
            self.scaling[adapter] = scale * lora_scaling(self.lora_alpha[adapter], self.r[adapter], rslora)

    def _dora_factor(self, adapter: str, norm: torch.Tensor) -> torch.Tensor:
        """``m / n`` shaped to broadcast over the base weight (per output row)."""
        factor = self.lora_magnitude_vector[adapter].weight.detach().flatten() / norm  # type: ignore[operator]  # lora_A/lora_B hold nn.Linear and lora_magnitude_vector DoraMagnitude; ModuleDict types them as Module
        factor = factor.view(-1, *[1] * (self.weight.dim() - 1))
        return factor.T if self.fan_in_fan_out else factor

    def merge_one(self, adapter: str, safe_merge: bool) -> None:
        """``W += s B A``; DoRA: ``W' = (m / n) (W + s B A)``, ``n`` from the unmerged weight, as in forward."""
        if not self.use_dora.get(adapter):
            self._add_delta(adapter, 1.0, safe_merge)
            return
        norm = self.dora_norm(adapter, unmerged_weight(self))
        update = merge_update(self._dora_factor(adapter, norm), self.delta_weight(adapter).detach())
        update_weight(self.get_base_layer(), update, safe=safe_merge, what=adapter)
        self._dora_norms[adapter] = norm

    def unmerge_one(self, adapter: str) -> None:
        if not self.use_dora.get(adapter):
            self._add_delta(adapter, -1.0, False)
            return
        update_weight(self.get_base_layer(), unmerge_step(self, adapter))
        del self._dora_norms[adapter]

    def check_mergeable(self, adapter: str) -> None:
        """Raise :class:`MergeError` for an adapter with ``lora_bias`` on a base that has no bias to add it to."""
        variant = self.lora_variant.get(adapter)
        if variant is not None and not variant.mergeable:
            raise MergeError(f"Adapter {adapter!r} is a {variant.name} adapter, which cannot be merged; keep it apart.")
        has_bias = adapter in self.lora_B and getattr(self.lora_B[adapter], "bias", None) is not None
        if has_bias and getattr(self.get_base_layer(), "bias", None) is None:
            raise MergeError(
                f"Cannot merge adapter {adapter!r}: its lora_B has a bias (lora_bias=True) and the base "
                f"{type(self.get_base_layer()).__name__} has none to add it to. Keep the adapter unmerged."
            )

    def _add_delta(self, adapter: str, sign: float, safe: bool) -> None:
        bias = getattr(self.lora_B[adapter], "bias", None) if adapter in self.lora_B else None
        base_bias = getattr(self.get_base_layer(), "bias", None)  # nn.Embedding has no bias
        self.check_mergeable(adapter)
        pair = (base_bias, bias.detach().to(base_bias.dtype)) if bias is not None and base_bias is not None else None
        require_finite_sum(pair, sign * self.scaling[adapter], safe, f"{adapter} (its lora_bias)")  # before any write
        update_weight(self.get_base_layer(), self.weight_update(adapter, sign), safe=safe, what=adapter)
        if pair is not None:
            with torch.no_grad():
                pair[0].add_(pair[1], alpha=sign * self.scaling[adapter])

    def weight_update(self, adapter: str, sign: float) -> Callable[[torch.Tensor], Any]:
        """The in-place function that adds ``sign * delta_weight(adapter)`` to a base weight."""
        delta = self.delta_weight(adapter).detach()
        return lambda w: w.add_(delta.to(w.dtype), alpha=sign)


class Linear(LoraLayer):
    """LoRA on ``nn.Linear`` / GPT-2 ``Conv1D``: ``A: (r, in)``, ``B: (out, r)``; ``x (..., in) -> (..., out)``."""

    _stack_cache: tuple[Any, torch.Tensor, torch.Tensor] | None
    _active_slots: torch.Tensor
    _active_slot_list: list[int]

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool = False) -> None:
        super().__init__(base_layer, fan_in_fan_out)
        base = self.get_base_layer()
        weight = base_weight(base)
        shape = weight_shape(base)
        out_features, in_features = shape[::-1] if fan_in_fan_out else shape
        self.__dict__.update(
            out_features=out_features,
            in_features=in_features,
            _stack_cache=None,
            _active_slots=fast_paths.slot_tensor([], weight.device),
            _active_slot_list=[],
            _compiled_factors=None,  # read by fast_paths.compiled, built by compiled_factors.prepare_compiled
            _compiled_stamp=None,
            _single_plan=None,  # fast_paths.single_plan: what the one-adapter inference path reads
        )

    def supports_lora_conversion(self, adapter_name: str = "default") -> bool:
        variant = self.lora_variant.get(adapter_name)  # DoRA's magnitude rescales, so no plain ΔW either
        return not self.use_dora.get(adapter_name) and (variant is None or variant.supports_lora_conversion())

    def create_weights(self, adapter: str, spec: LoraLayerSpec) -> None:
        base = self.get_base_layer()
        kw: dict[str, Any] = {"device": adapter_device(base), "dtype": adapter_dtype(base_weight(base))}
        modules: Any = self._modules
        set_child(modules["lora_A"], adapter, empty_linear(self.in_features, spec.r, bias=False, **kw))
        set_child(modules["lora_B"], adapter, empty_linear(spec.r, self.out_features, bias=spec.lora_bias, **kw))

    def weight_update(self, adapter: str, sign: float) -> Callable[[torch.Tensor], Any]:
        """``W += sign * s * B @ A`` as one in-place GEMM (``W.addmm_``), with no full-size temporary.

        Half-precision bases with float32 adapters keep the float32 product (the parent's path), as PEFT does.
        """
        A, B = (t.detach() for t in self.factor_tensors(adapter))
        if A.dtype != self.get_base_layer().weight.dtype or adapter in self.lora_variant:
            return super().weight_update(adapter, sign)
        alpha = sign * float(self.scaling[adapter])
        if self.fan_in_fan_out:
            return lambda w: w.addmm_(A.t(), B.t(), alpha=alpha)
        return lambda w: w.addmm_(B, A, alpha=alpha)

    # -- fast paths (peftkit.methods.lora.fast_paths; each equals adapted_forward's formula) ----------------
    single_adapter_forward = fast_paths.single_adapter  # bound directly: one call less per layer and forward

    def mixed_forward(self, x: torch.Tensor, routing: BatchRouting, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args or kwargs:
            return super().mixed_forward(x, routing, *args, **kwargs)
        fast = fast_paths.stacked_mixed(self, x, routing)
        return fast if fast is not None else super().mixed_forward(x, routing)

    def compiled_forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor | None:
        return None if args or kwargs else fast_paths.compiled(self, x)

    refresh_active_slots = fast_paths.refresh_active_slots
    prepare_compiled = compiled_factors.prepare_compiled

    # -- the formula --------------------------------------------------------------------------------
    def lora_out(self, x: torch.Tensor, adapter: str) -> torch.Tensor:
        """``s * B(A(x))`` in the adapter's dtype."""
        A, B = self.lora_A[adapter], self.lora_B[adapter]
        return B(A(x.to(A.weight.dtype))) * self.scaling[adapter]  # type: ignore[arg-type]  # lora_A/lora_B hold nn.Linear and lora_magnitude_vector DoraMagnitude; ModuleDict types them as Module

    def adapt_output(self, result: torch.Tensor, x: torch.Tensor, adapter: str) -> torch.Tensor:
        variant = self.lora_variant.get(adapter)
        if variant is not None:
            return variant.adapt_output(self, result, x, adapter)
        return self.plain_adapt_output(result, x, adapter)

    def plain_adapt_output(self, result: torch.Tensor, x: torch.Tensor, adapter: str) -> torch.Tensor:
        """``result + s B A dropout(x)``, or DoRA's output (:func:`~peftkit.methods.lora.dora.dora_output`)."""
        if not self.use_dora.get(adapter):
            return result + self.lora_out(self.lora_dropout[adapter](x), adapter).to(result.dtype)
        return dora_output(self, result, x, adapter)

    @property
    def _active_adapter(self) -> list[str]:
        return self.__dict__["_active_names"]

    @_active_adapter.setter
    def _active_adapter(self, names: list[str]) -> None:
        self.__dict__["_active_names"] = names
        self.refresh_active_slots()

    def update_layer(self, adapter: str, spec: LoraLayerSpec, init_weights: bool = True) -> None:
        super().update_layer(adapter, spec, init_weights)
        self.__dict__["_single_plan"] = None
        self.refresh_active_slots()

    def delete_adapter(self, adapter: str, status: AdapterStatus | None = None) -> None:
        super().delete_adapter(adapter, status)
        self.__dict__.update(_stack_cache=None, _single_plan=None)
        self.refresh_active_slots()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_stack_cache=None, _compiled_factors=None, _compiled_stamp=None, _single_plan=None)
        return state
