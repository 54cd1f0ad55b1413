"""The layer LoHa and LoKr share: ``y = base(x) + op(x, delta W)``, ``delta W`` rebuilt from the adapter's factors.

``op`` is the base layer's own operation with the base's geometry (``F.linear`` for ``nn.Linear``; the
convolution with the base's stride, padding, dilation, groups and padding mode for ``nn.Conv1d`` / ``nn.Conv2d``).
A method supplies the factor shapes, their initialisation and the formula of ``delta W`` (:meth:`LycorisLayer.
create_factors`, :meth:`LycorisLayer.init_factors`, :meth:`LycorisLayer.rebuild`); this class owns the rest:

* training only: module dropout skips the whole adapter with probability ``module_dropout``; rank dropout
  multiplies each output row of ``delta W`` by a Bernoulli(``1 - rank_dropout``) mask, divided by the mask's
  mean when ``rank_dropout_scale`` (LoHa always scales; LoKr only when asked);
* merge ``W += delta W`` and unmerge ``W -= delta W`` (through the quantization backend for a quantized base).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from peftkit.errors import TargetingError
from peftkit.layers.base import AdapterLayer
from peftkit.layers.placement import adapter_device
from peftkit.merging.merge import update_weight
from peftkit.methods.lora.layer import adapter_dtype
from peftkit.quant.base import weight_shape


@dataclass(frozen=True)
class LycorisLayerSpec:
    """Per-layer facts derived from a LyCORIS config and the module name (the config is never mutated).

    Attributes:
        r: Rank after ``rank_pattern``.
        alpha: Alpha after ``alpha_pattern``; ``scaling = alpha / r``.
        rank_dropout: Probability of dropping an output row of ``delta W`` while training.
        module_dropout: Probability of skipping the adapter while training.
        init_weights: The config's ``init_weights`` (``True``, ``False`` or LoKr's ``"lycoris"``).
        use_effective_conv2d: Factor a convolution kernel larger than 1 with a CP core.
        rank_dropout_scale: Divide the rank-dropout mask by its mean.
        decompose_both: LoKr: also factor the left Kronecker factor when the rank is small enough.
        decompose_factor: LoKr: preferred size of the first factor of each dimension (``-1``: near the root).
    """

    r: int
    alpha: float
    rank_dropout: float = 0.0
    module_dropout: float = 0.0
    init_weights: bool | str = True
    use_effective_conv2d: bool = False
    rank_dropout_scale: bool = True
    decompose_both: bool = False
    decompose_factor: int = -1

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


def kaiming_(tensor: torch.Tensor) -> None:
    """Kaiming-uniform with ``a = sqrt(5)`` (``nn.Linear``'s default), PEFT's choice for random factors."""
    nn.init.kaiming_uniform_(tensor, a=math.sqrt(5))


def kernel_size(base: nn.Module) -> tuple[int, ...]:
    """The kernel of a convolution base (``()`` for a Linear)."""
    return tuple(base.kernel_size) if isinstance(base, (nn.Conv1d, nn.Conv2d)) else ()


def uses_cp_core(base: nn.Module, spec: LycorisLayerSpec) -> bool:
    """Whether the kernel gets a CP core: asked for, and the base is a convolution with a kernel larger than 1
    (a 1x1 kernel is a matrix product, so the flat form is used)."""
    return spec.use_effective_conv2d and any(k != 1 for k in kernel_size(base))


class LycorisLayer(AdapterLayer):
    """State shared by LoHa and LoKr layers on ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d``.

    ``x (..., in) -> (..., out)`` for a Linear, ``(N, C_in, *spatial) -> (N, C_out, *spatial')`` for a convolution.
    Attribute names of the per-adapter settings are PEFT's.
    """

    other_param_names: ClassVar[tuple[str, ...]] = (
        "r", "alpha", "scaling", "rank_dropout", "rank_dropout_scale", "module_dropout",
    )  # fmt: skip

    r: dict[str, int]
    alpha: dict[str, float]
    scaling: dict[str, float]
    rank_dropout: dict[str, float]
    rank_dropout_scale: dict[str, bool]
    module_dropout: dict[str, float]

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool = False) -> None:
        super().__init__(base_layer)
        base = self.get_base_layer()
        if not isinstance(base, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            raise TargetingError(f"{type(self).__name__} adapts nn.Linear, nn.Conv1d and nn.Conv2d, not {type(base)}.")
        self.__dict__.update(r={}, alpha={}, scaling={}, rank_dropout={}, rank_dropout_scale={}, module_dropout={})
        for name in self.adapter_layer_names:
            self._modules[name] = nn.ParameterDict()
        self.out_features, self.in_features = tuple(weight_shape(base))[:2]

    # -- method hooks -----------------------------------------------------------------------------
    def create_factors(self, spec: LycorisLayerSpec) -> dict[str, tuple[int, ...]]:
        """``{container name: shape}`` of the factors of a new adapter with ``spec`` on this layer."""
        raise NotImplementedError

    def init_factors(self, factors: Mapping[str, torch.Tensor], spec: LycorisLayerSpec) -> None:
        """Initialise freshly allocated ``factors`` in place (``spec.init_weights`` says how)."""
        raise NotImplementedError

    def rebuild(self, factors: Mapping[str, torch.Tensor], scaling: float) -> torch.Tensor:
        """``delta W`` from ``factors`` (any shape with the base weight's number of elements)."""
        raise NotImplementedError

    # -- adapter lifecycle ------------------------------------------------------------------------
    def update_layer(self, adapter: str, spec: LycorisLayerSpec, init_weights: bool = True) -> None:
        """Create (or replace) adapter ``adapter`` with the facts in ``spec``.

        Args:
            init_weights: ``False`` allocates without initialising, for weights a load will overwrite.
        """
        base = self.get_base_layer()
        kw: dict[str, Any] = {"device": adapter_device(base), "dtype": adapter_dtype(base.weight)}
        for name in self.adapter_layer_names:
            container = getattr(self, name)
            if adapter in container:
                del container[adapter]
        factors = {name: torch.empty(shape, **kw) for name, shape in self.create_factors(spec).items()}
        if init_weights:
            with torch.no_grad():
                self.init_factors(factors, spec)
        for name, tensor in factors.items():
            getattr(self, name)[adapter] = nn.Parameter(tensor)
        self.r[adapter], self.alpha[adapter], self.scaling[adapter] = spec.r, spec.alpha, spec.scaling
        self.rank_dropout[adapter], self.module_dropout[adapter] = spec.rank_dropout, spec.module_dropout
        self.rank_dropout_scale[adapter] = spec.rank_dropout_scale
        if not self._active_adapter:
            self._active_adapter = [adapter]

    def factors(self, adapter: str) -> dict[str, torch.Tensor]:
        """``{container name: tensor}`` of ``adapter`` in this layer."""
        found = {}
        for name in self.adapter_layer_names:
            container = getattr(self, name)
            if adapter in container:
                found[name] = container[adapter]
        return found

    def delta_weight(self, adapter: str, rank_dropout: bool = False) -> torch.Tensor:
        """``delta W`` of ``adapter`` in the base weight's shape (``(out, in)`` or ``(out, in / groups, *k)``),
        scaled by ``alpha / r``; with ``rank_dropout`` its rows are masked as described in the module doc."""
        base = self.get_base_layer()
        delta = self.rebuild(self.factors(adapter), self.scaling[adapter]).reshape(weight_shape(base))
        if not rank_dropout:
            return delta
        keep = (torch.rand(delta.shape[0], device=delta.device) > self.rank_dropout[adapter]).to(delta.dtype)
        if self.rank_dropout_scale[adapter]:
            keep = keep / keep.mean().clamp_min(torch.finfo(keep.dtype).tiny)  # all rows dropped: zeros, not NaN
        return delta * keep.view(-1, *([1] * (delta.dim() - 1)))

    def supports_lora_conversion(self, adapter_name: str = "default") -> bool:
        return isinstance(self.get_base_layer(), nn.Linear)  # PEFT converts Linear layers only

    # -- template hooks ---------------------------------------------------------------------------
    def adapt_output(self, result: torch.Tensor, x: torch.Tensor, adapter: str) -> torch.Tensor:
        if self.training and self.module_dropout[adapter] > 0 and torch.rand(1).item() <= self.module_dropout[adapter]:
            return result
        return result + self.delta_output(x, adapter).to(result.dtype)

    def delta_output(self, x: torch.Tensor, adapter: str) -> torch.Tensor:
        """``op(x, delta W)``: the base operation with ``delta W`` and no bias (a method may compute it without
        building ``delta W``)."""
        delta = self.delta_weight(adapter, rank_dropout=self.training and self.rank_dropout[adapter] > 0)
        base = self.get_base_layer()
        x = x.to(delta.dtype)
        return F.linear(x, delta) if isinstance(base, nn.Linear) else base._conv_forward(x, delta, None)

    def merge_one(self, adapter: str, safe_merge: bool) -> None:
        delta = self.delta_weight(adapter).detach()
        update_weight(self.get_base_layer(), lambda w: w.add_(delta.to(w.dtype)), safe=safe_merge, what=adapter)

    def unmerge_one(self, adapter: str) -> None:
        delta = self.delta_weight(adapter).detach()
        update_weight(self.get_base_layer(), lambda w: w.sub_(delta.to(w.dtype)), what=adapter)
