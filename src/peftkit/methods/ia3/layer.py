"""IA3 layers (Liu et al., 2022): one learned vector ``l`` per adapter rescales activations.

* attention-type target: ``y = base(x) * l`` (per output feature / channel),
* feed-forward target:   ``y = base(x * l)`` (per input feature / channel).

Several active adapters compose multiplicatively. Merging folds ``l`` into the weight (``W * l`` along the
output rows, or along the input columns for feed-forward targets; the bias of an attention-type target is
scaled too); unmerging divides it back out. The template :class:`~peftkit.layers.base.AdapterLayer` owns
the control flow; this module only supplies the hooks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from peftkit.layers.base import AdapterLayer
from peftkit.layers.placement import adapter_device
from peftkit.merging.merge import MergeError, update_weight
from peftkit.methods.lora.layer import adapter_dtype
from peftkit.quant.base import weight_shape


@dataclass(frozen=True)
class IA3LayerSpec:
    """Per-layer facts derived from an :class:`~peftkit.methods.ia3.config.IA3Config` and the module name.

    Attributes:
        is_feedforward: Scale the input (``True``) or the output (``False``).
        fan_in_fan_out: The base weight is stored ``(in, out)`` (GPT-2 ``Conv1D``).
        init: Start at ones (``True``) or random normal (``False``).
    """

    is_feedforward: bool
    fan_in_fan_out: bool = False
    init: bool = True


class IA3Layer(AdapterLayer):
    """State shared by IA3 layers: ``ia3_l`` (PEFT's state-dict name) and the per-adapter placement."""

    adapter_layer_names = ("ia3_l",)
    other_param_names = ("is_feedforward",)

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool = False) -> None:
        super().__init__(base_layer)
        self.fan_in_fan_out = fan_in_fan_out
        self.ia3_l = nn.ParameterDict()
        self.is_feedforward: dict[str, bool] = {}
        self.in_features = self.out_features = 0

    # -- shapes, provided per layer kind ----------------------------------------------------------
    def vector_shape(self, feedforward: bool) -> tuple[int, ...]:
        """Shape of ``ia3_l`` as stored on disk."""
        raise NotImplementedError

    def on_activations(self, vector: torch.Tensor) -> torch.Tensor:
        """``vector`` shaped to broadcast over this layer's input or output activations."""
        raise NotImplementedError

    def on_weight(self, adapter: str) -> torch.Tensor:
        """``ia3_l[adapter]`` shaped to broadcast over the base weight (rows or columns it scales)."""
        raise NotImplementedError

    # -- adapter lifecycle ------------------------------------------------------------------------
    def update_layer(self, adapter: str, spec: IA3LayerSpec, init_weights: bool = True) -> None:
        """Create (or replace) adapter ``adapter``: ``ia3_l`` of :meth:`vector_shape`.

        Args:
            init_weights: ``False`` allocates without initialising, for weights a load will overwrite.
        """
        weight = self.get_base_layer().weight
        device = adapter_device(self.get_base_layer())
        vector = torch.empty(self.vector_shape(spec.is_feedforward), device=device, dtype=adapter_dtype(weight))
        if init_weights:
            with torch.no_grad():
                vector.fill_(1.0) if spec.init else vector.normal_()
        self.ia3_l[adapter] = nn.Parameter(vector)
        self.is_feedforward[adapter] = spec.is_feedforward
        if not self._active_adapter:
            self._active_adapter = [adapter]

    # -- template hooks ---------------------------------------------------------------------------
    def adapt_input(self, x: torch.Tensor, adapter: str) -> torch.Tensor:
        if not self.is_feedforward[adapter]:
            return x
        vector = self.ia3_l[adapter]
        return (x.to(vector.dtype) * self.on_activations(vector)).to(x.dtype)

    def adapt_output(self, result: torch.Tensor, x: torch.Tensor, adapter: str) -> torch.Tensor:
        if self.is_feedforward[adapter]:
            return result
        vector = self.ia3_l[adapter]
        return (result.to(vector.dtype) * self.on_activations(vector)).to(result.dtype)

    def merge_one(self, adapter: str, safe_merge: bool) -> None:
        self._rescale_base(adapter, invert=False, safe=safe_merge)

    def unmerge_one(self, adapter: str) -> None:
        self._rescale_base(adapter, invert=True, safe=False)

    def _rescale_base(self, adapter: str, invert: bool, safe: bool) -> None:
        """``W *= l`` (``W /= l`` when ``invert``), and the bias of an attention-type target alike.

        A zero entry of ``l`` cannot be divided back out; it is replaced by a tiny value so that unmerging
        stays finite (the merged rows were zero anyway).
        """
        base = self.get_base_layer()
        factor = self.on_weight(adapter).detach()
        bias = None if self.is_feedforward[adapter] else getattr(base, "bias", None)
        bias_factor = self.ia3_l[adapter].detach().flatten()
        if invert:
            factor = torch.where(factor == 0, torch.full_like(factor, 1e-8), factor).reciprocal()
            bias_factor = torch.where(bias_factor == 0, torch.full_like(bias_factor, 1e-8), bias_factor).reciprocal()
        if safe and bias is not None and not torch.isfinite(bias.detach() * bias_factor.to(bias.dtype)).all():
            raise MergeError(f"Merging {adapter} would write NaN/Inf into the base bias; the adapter is broken.")
        update_weight(base, lambda w: w.mul_(factor.to(w.dtype)), safe=safe, what=adapter)
        if bias is not None:
            with torch.no_grad():
                bias.mul_(bias_factor.to(bias.dtype))


class Linear(IA3Layer):
    """IA3 on ``nn.Linear`` / GPT-2 ``Conv1D``; ``x (..., in) -> (..., out)``.

    ``ia3_l`` is ``(out, 1)`` for attention-type targets and ``(1, in)`` for feed-forward targets, so that
    ``W (out, in) * l`` is the merged weight (transposed for ``fan_in_fan_out``).
    """

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool = False) -> None:
        super().__init__(base_layer, fan_in_fan_out)
        shape = weight_shape(self.get_base_layer())
        self.out_features, self.in_features = shape[::-1] if fan_in_fan_out else shape

    def vector_shape(self, feedforward: bool) -> tuple[int, ...]:
        return (1, self.in_features) if feedforward else (self.out_features, 1)

    def on_activations(self, vector: torch.Tensor) -> torch.Tensor:
        return vector.flatten()

    def on_weight(self, adapter: str) -> torch.Tensor:
        vector = self.ia3_l[adapter]
        return vector.T if self.fan_in_fan_out else vector


class Conv(IA3Layer):
    """IA3 on ``nn.Conv1d/2d/3d``; ``x (N, C_in, *spatial) -> (N, C_out, *spatial')``.

    ``ia3_l`` is ``(1, C, 1, ...)`` (one trailing 1 per spatial dimension), ``C`` being the output
    channels for attention-type targets and the input channels for feed-forward targets.
    """

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool = False) -> None:
        super().__init__(base_layer, fan_in_fan_out=False)
        base = self.get_base_layer()
        self.in_features, self.out_features = base.in_channels, base.out_channels
        self.spatial_dims = base.weight.dim() - 2

    def vector_shape(self, feedforward: bool) -> tuple[int, ...]:
        channels = self.in_features if feedforward else self.out_features
        return (1, channels) + (1,) * self.spatial_dims

    def on_activations(self, vector: torch.Tensor) -> torch.Tensor:
        return vector

    def on_weight(self, adapter: str) -> torch.Tensor:
        """Attention-type: ``(C_out, 1, ...)``. Feed-forward: ``(C_out, C_in / groups, 1, ...)`` picking, for
        each output channel, the input channels of its group (``(1, C_in, 1, ...)`` when ``groups == 1``)."""
        vector = self.ia3_l[adapter]
        if not self.is_feedforward[adapter]:
            return vector.transpose(0, 1)
        groups = self.get_base_layer().groups
        if groups == 1:
            return vector
        per_group_in, per_group_out = self.in_features // groups, self.out_features // groups
        grouped = vector.reshape(groups, 1, per_group_in, *vector.shape[2:])
        expanded = grouped.expand(groups, per_group_out, per_group_in, *vector.shape[2:])
        return expanded.reshape(self.out_features, per_group_in, *vector.shape[2:])
