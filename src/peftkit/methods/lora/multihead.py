"""LoRA on ``torch.nn.MultiheadAttention`` (Hu et al., 2021), laid out as PEFT 0.21.2 lays it out.

The attention module has no linear layer to wrap for its input projection (``in_proj_weight (3E, E)`` is a bare
parameter) and never calls its ``out_proj`` (it reads ``out_proj.weight``), so one target adapts both:

* the input projection: this layer's ``lora_A (r, E)`` / ``lora_B (3E, r)``, the update
  ``Delta W_in = s * B @ A`` on ``in_proj_weight``;
* the output projection: a LoRA :class:`~peftkit.methods.lora.layer.Linear` put in place of the base's
  ``out_proj`` (keys ``<mha>.base_layer.out_proj.lora_A`` ...), update ``Delta W_out = s * B' @ A'``.

A forward runs the base module with ``W_in + Delta W_in`` and ``W_out + k * Delta W_out`` in place of its weights
for the call, so every option of ``MultiheadAttention.forward`` (``batch_first``, masks, ``need_weights``...)
keeps its meaning, and gradients reach the factors. ``k`` is :data:`OUT_PROJ_UPDATE_FACTOR`.

Only the packed layout (``kdim == vdim == embed_dim``) is supported, without DoRA or ``lora_bias`` (as in PEFT).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from peftkit.errors import ArgumentTypeError, ConfigError, TargetingError
from peftkit.layers.base import CALL_STATE, AdapterLayer
from peftkit.layers.modules_to_save import ModulesToSaveWrapper
from peftkit.layers.walk import walk_model
from peftkit.layers.weight_swap import SWAP_LOCK, swapped_tensors
from peftkit.merging.merge import require_finite_sum
from peftkit.methods.lora.layer import Linear, LoraLayer, LoraLayerSpec, adapter_dtype, empty_linear

#: PEFT 0.21.2's MultiheadAttention layer applies the out_proj update twice: its merge writes
#: ``W_out + Delta W_out`` and then lets the out_proj layer's own merge add ``Delta W_out`` again, and its forward is
#: that merge around the base call. Its outputs (unmerged and merged alike) are those of ``W_out + 2 Delta W_out``.
#: peftkit applies the same factor so that an adapter gives the same outputs in both libraries (reported upstream:
#: huggingface/peft pull request 3774). Only ``out_proj`` of an adapted attention module is concerned.
OUT_PROJ_UPDATE_FACTOR = 2.0

#: Attributes of the wrapped attention module that code around it reads (``nn.TransformerEncoderLayer`` checks
#: ``batch_first``, ``in_proj_weight``...); the adapter layer answers them from the base module.
ATTENTION_ATTRIBUTES = frozenset(
    {
        "embed_dim", "kdim", "vdim", "_qkv_same_embed_dim", "num_heads", "dropout", "batch_first", "head_dim",
        "in_proj_weight", "in_proj_bias", "bias_k", "bias_v", "add_zero_attn", "merge_masks",
    }
)  # fmt: skip


def _requires_own_forward(module: nn.Module, args: Any) -> None:
    """A forward pre-hook that changes nothing. ``nn.TransformerEncoderLayer`` (eval mode) runs a fused kernel on
    its attention's base weights, skipping this layer's forward, unless a submodule has hooks: this one keeps the
    adapter in the computation."""


class OutProjection(Linear):
    """The LoRA layer on an adapted attention module's ``out_proj``: placed and driven by
    :class:`MultiheadAttention` (never targeted on its own); merges ``OUT_PROJ_UPDATE_FACTOR * s * B' @ A'``."""

    is_inner_layer: ClassVar[bool] = True

    def merge_one(self, adapter: str, safe_merge: bool) -> None:
        self._add_delta(adapter, OUT_PROJ_UPDATE_FACTOR, safe_merge)

    def unmerge_one(self, adapter: str) -> None:
        self._add_delta(adapter, -OUT_PROJ_UPDATE_FACTOR, False)


class MultiheadAttention(LoraLayer):
    """LoRA on ``nn.MultiheadAttention``: ``A (r, E)``, ``B (3E, r)`` on the input projection, and an
    :class:`OutProjection` at ``base_layer.out_proj``. Inputs and outputs are the base module's
    (``query (L, N, E)``, or ``(N, L, E)`` with ``batch_first``; returns ``(output, weights)``). This layer's
    adapter state (active adapters, disabled) decides for both projections, since torch never calls ``out_proj``.

    Raises:
        TargetingError: separate q/k/v projection weights (``kdim`` / ``vdim`` differ from ``embed_dim``), or an
            ``out_proj`` that is not an ``nn.Linear``.
    """

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool = False) -> None:
        super().__init__(base_layer, fan_in_fan_out=False)
        base = self.get_base_layer()
        if not base._qkv_same_embed_dim:
            raise TargetingError(
                "LoRA on nn.MultiheadAttention needs its packed input projection (kdim == vdim == embed_dim); this "
                f"one has kdim={base.kdim}, vdim={base.vdim}, embed_dim={base.embed_dim}. Target other modules."
            )
        if not isinstance(base.out_proj, (nn.Linear, OutProjection)):
            raise TargetingError(
                f"LoRA on nn.MultiheadAttention adapts its out_proj, an nn.Linear; got {type(base.out_proj).__name__}."
            )
        self.in_features, self.out_features = base.embed_dim, 3 * base.embed_dim
        self.register_forward_pre_hook(_requires_own_forward)

    @property
    def out_projection(self) -> OutProjection | None:
        """The LoRA layer at ``base_layer.out_proj`` (``None`` before the first adapter)."""
        out_proj = self.get_base_layer().out_proj
        return out_proj if isinstance(out_proj, OutProjection) else None

    def inner_layers(self) -> list[tuple[str, AdapterLayer]]:
        out_proj = self.out_projection
        return [("base_layer.out_proj", out_proj)] if out_proj is not None else []

    def release_inner(self) -> None:
        out_proj = self.out_projection
        if out_proj is not None:
            self.get_base_layer().out_proj = out_proj.base_layer

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name not in ATTENTION_ATTRIBUTES:
                raise
        return getattr(self.get_base_layer(), name)

    @property
    def weight(self) -> torch.Tensor:
        """The base module's input projection ``in_proj_weight (3E, E)`` (its main weight: dtype, device)."""
        return self.get_base_layer().in_proj_weight

    @property
    def out_proj(self) -> nn.Module:
        """The base module's plain output projection (what torch's attention code reads the weight of)."""
        out_proj = self.get_base_layer().out_proj
        return out_proj.get_base_layer() if isinstance(out_proj, AdapterLayer) else out_proj

    def update_layer(self, adapter: str, spec: LoraLayerSpec, init_weights: bool = True) -> None:
        """Add ``adapter`` to the input projection and to ``out_proj`` (placing its layer on first use).

        Raises:
            ConfigError: ``use_dora`` or ``lora_bias`` (checked before anything changes).
        """
        for option, on in (("use_dora", spec.use_dora), ("lora_bias", spec.lora_bias)):
            if on:
                raise ConfigError(f"LoRA on nn.MultiheadAttention does not support {option}=True; turn it off.")
        super().update_layer(adapter, spec, init_weights)
        base = self.get_base_layer()
        out_proj = self.out_projection or OutProjection(base.out_proj)
        out_proj.update_layer(adapter, spec, init_weights)
        base.out_proj = out_proj  # placed once it holds the adapter: a failure above leaves the base as it was

    def create_weights(self, adapter: str, spec: LoraLayerSpec) -> None:
        weight = self.get_base_layer().in_proj_weight
        kw: dict[str, Any] = {"device": weight.device, "dtype": adapter_dtype(weight)}
        self.lora_A[adapter] = empty_linear(self.in_features, spec.r, bias=False, **kw)
        self.lora_B[adapter] = empty_linear(spec.r, self.out_features, bias=False, **kw)

    # -- what the layer and its out_proj layer do together -----------------------------------------------
    def delete_adapter(self, adapter: str, status: Any = None) -> None:
        super().delete_adapter(adapter, status)
        out_proj = self.out_projection
        if out_proj is not None and out_proj.holds(adapter):
            out_proj.delete_adapter(adapter, status)

    def set_adapter(self, adapter_names: str | Sequence[str], trainable: bool = True) -> None:
        super().set_adapter(adapter_names, trainable)
        if self.out_projection is not None:
            self.out_projection.set_adapter(adapter_names, trainable)

    def merge(self, safe_merge: bool = False, adapter_names: Sequence[str] | None = None) -> None:
        """Merge into ``in_proj_weight`` and ``out_proj`` (each checked for NaN/Inf first with ``safe_merge``)."""
        super().merge(safe_merge, adapter_names)
        if self.out_projection is not None:
            self.out_projection.merge(safe_merge, adapter_names if adapter_names is not None else self.active_adapters)

    def unmerge(self) -> None:
        super().unmerge()
        if self.out_projection is not None:
            self.out_projection.unmerge()

    def merge_one(self, adapter: str, safe_merge: bool) -> None:
        self._add_in_proj(adapter, 1.0, safe_merge)

    def unmerge_one(self, adapter: str) -> None:
        self._add_in_proj(adapter, -1.0, False)

    def _add_in_proj(self, adapter: str, sign: float, safe: bool) -> None:
        weight = self.get_base_layer().in_proj_weight
        delta = self.delta_weight(adapter).detach().to(weight.dtype)
        require_finite_sum((weight.detach(), delta), sign, safe, adapter)
        with torch.no_grad():
            weight.add_(delta, alpha=sign)

    # -- forward ------------------------------------------------------------------------------------
    def adapted_forward(self, x: torch.Tensor, adapters: Sequence[str], *args: Any, **kwargs: Any) -> Any:
        """The base attention with ``W_in + sum Delta W_in`` and ``W_out + k * sum Delta W_out`` for this call."""
        with SWAP_LOCK:  # taken before reading the weights: another thread's swapped-in tensors must not be read
            base = self.get_base_layer()
            out_proj = self.out_projection
            in_weight = base.in_proj_weight
            for adapter in adapters:
                in_weight = in_weight + self.delta_weight(adapter).to(in_weight.dtype)
            out_layer = out_proj.get_base_layer() if out_proj is not None else base.out_proj
            out_weight = out_layer.weight
            for adapter in adapters:
                if out_proj is not None and out_proj.holds(adapter):
                    delta = out_proj.delta_weight(adapter).to(out_weight.dtype)
                    out_weight = out_weight + OUT_PROJ_UPDATE_FACTOR * delta
            with swapped_tensors([(base, "in_proj_weight", in_weight), (out_layer, "weight", out_weight)]):
                return self.base_layer(x, *args, **kwargs)

    def forward(self, x: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> Any:
        """The template's forward; a mixed batch (``adapter_names=...``) is refused, as in PEFT, with a
        ``TypeError`` (:class:`~peftkit.errors.ArgumentTypeError`): the update lives in the projection weights,
        which are one per call, not per sample."""
        if CALL_STATE.routing is not None:
            raise ArgumentTypeError(
                "LoRA on nn.MultiheadAttention cannot serve a mixed batch (adapter_names=...): its update is applied "
                "to the projection weights, one set per call. Run one adapter at a time."
            )
        return super().forward(x, *args, **kwargs)

    def _restore_weights(self) -> None:
        """PEFT's layer re-registers weights it swapped out; peftkit never unregisters them (nothing to do)."""


def warn_unused_out_proj(model: nn.Module) -> None:
    """Warn about LoRA layers on the ``out_proj`` of a plain ``nn.MultiheadAttention`` (e.g. from
    ``target_modules="all-linear"``): the attention reads ``out_proj.weight`` and never calls it, so such an adapter
    changes nothing (as in PEFT, which adapts it all the same). Targeting the attention module adapts both
    projections."""
    if not _may_hold_attention(model):
        return
    unused = [
        f"{name}.out_proj" if name else "out_proj"
        for name, module in _attention_modules(model)
        if isinstance(module.out_proj, AdapterLayer) and not isinstance(module.out_proj, OutProjection)
    ]
    if unused:
        warnings.warn(
            f"The adapters on {', '.join(unused)} have no effect: nn.MultiheadAttention reads out_proj.weight "
            "without calling out_proj. Target the attention module itself to adapt its projections.",
            UserWarning,
            stacklevel=4,
        )


def _may_hold_attention(model: nn.Module) -> bool:
    """Whether :func:`_attention_modules` can find anything: an ``nn.MultiheadAttention`` in the (cached) model
    walk, or a module the walk does not enter (a modules_to_save wrapper, an adapter layer's base module with
    children of its own). Most models have none, and the walk is reused where a full search would walk again."""
    for _, module in walk_model(model):
        if isinstance(module, (nn.MultiheadAttention, ModulesToSaveWrapper)):
            return True
        if isinstance(module, AdapterLayer) and module.get_base_layer()._modules:
            return True
    return False


def _attention_modules(model: nn.Module) -> list[tuple[str, nn.MultiheadAttention]]:
    """``(name, module)`` of every ``nn.MultiheadAttention`` in ``model``, as ``named_modules()`` finds them, but
    without entering an adapter layer's containers (only its ``base_layer``): this runs after every LoRA injection,
    and the ~10 modules per adapted layer would make the walk several times longer."""
    found: list[tuple[str, nn.MultiheadAttention]] = []
    seen: set[int] = set()
    stack: list[tuple[str, nn.Module]] = [("", model)]
    while stack:
        name, module = stack.pop()
        if id(module) in seen:  # listed once, under its first name in module order (as named_modules)
            continue
        seen.add(id(module))
        if isinstance(module, nn.MultiheadAttention):
            found.append((name, module))
        children = module._modules
        if isinstance(module, AdapterLayer):
            children = {"base_layer": children["base_layer"]} if "base_layer" in children else {}
        prefix = name + "." if name else ""
        stack.extend((prefix + key, child) for key, child in reversed(children.items()) if child is not None)
    return found
