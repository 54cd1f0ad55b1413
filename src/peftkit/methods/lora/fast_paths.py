"""LoRA's fast paths, kept apart from the readable formula in :mod:`~peftkit.methods.lora.layer`.

Every path computes what :meth:`~peftkit.layers.base.AdapterLayer.adapted_forward` computes with
:meth:`~peftkit.methods.lora.layer.Linear.adapt_output`, ``y = base(x) + s * B A dropout(x)`` (Hu et al.,
2021), only faster, and returns ``None`` where it does not apply (the layer then takes the plain path):

* :func:`single_adapter`: one active adapter, no extra arguments: base and adapter in one fused autograd
  function (:mod:`~peftkit.methods.lora.autograd`) that keeps no dropped copy of the input;
* :func:`stacked_mixed`: a mixed batch (one adapter per sample) as one base forward plus a segmented
  gather-matmul over stacked factors (:mod:`~peftkit.methods.lora.segments`, :mod:`~peftkit.methods.lora.stacked`):
  ``torch`` operations, or on CUDA with ``triton`` installed the SGMV kernels of
  :mod:`~peftkit.methods.lora.sgmv_triton`;
* :func:`compiled`: under ``torch.compile`` in eval mode, the active adapters picked by an index tensor from
  stacked factors, so switching adapters changes data, never the traced code.

``layer`` is a LoRA :class:`~peftkit.methods.lora.layer.Linear` (typed ``Any``: that module imports this one).

``tests/methods/test_lora_fast_paths.py`` checks each against the plain formula.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as module_hooks
from transformers.pytorch_utils import Conv1D

from peftkit.layers.base import CALL_STATE, BatchRouting
from peftkit.methods.lora import segments, stacked
from peftkit.methods.lora.autograd import lora_linear

#: Base types whose forward is exactly ``F.linear(x, W, b)`` (``Conv1D``: with ``W`` transposed).
FUSABLE_BASES = (nn.Linear, Conv1D)


def has_hooks(module: nn.Module) -> bool:
    """Whether calling ``module`` does more than its class's ``forward`` (hooks, a patched ``forward``)."""
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or module._backward_pre_hooks
        or "forward" in module.__dict__
        or module_hooks._global_forward_hooks
        or module_hooks._global_forward_pre_hooks
        or module_hooks._global_backward_hooks
        or module_hooks._global_backward_pre_hooks
    )


def single_adapter(layer: Any, x: torch.Tensor, adapter: str) -> torch.Tensor | None:
    """One active adapter: :func:`inference_single` for a short input (decoding) that records no adapter
    gradient and drops nothing, else :func:`fused_single`; ``None`` where neither applies (the template's
    formula then runs)."""
    if torch.compiler.is_compiling():
        return None
    plan = layer.__dict__.get("_single_plan")
    if plan is None or plan.adapter != adapter or plan.registrations != stacked.COUNT["registrations"]:
        plan = single_plan(layer, adapter)
    result = inference_single(layer, plan, x)
    return result if result is not None else fused_single(layer, x, adapter)


class SinglePlan:
    """What a layer's one-adapter inference path reads, found once and kept until the layer's adapters,
    factor modules or weights are replaced (:class:`~peftkit.methods.lora.stacked.Registrations` counts those;
    :meth:`~peftkit.methods.lora.layer.Linear.update_layer` and ``delete_adapter`` drop the plan).

    Attributes:
        adapter: The adapter it serves.
        registrations: The registration count it was found at.
        params_a, params_b: The ``_parameters`` dicts of ``lora_A[adapter]`` / ``lora_B[adapter]`` (read per call,
            so weights put there directly, as FSDP and loads on ``meta`` do, are seen); ``None`` for an adapter
            the plain formula does not describe (absent, DoRA, a LoRA variant, a ``lora_B`` bias, a dropout
            module other than ``nn.Dropout`` / ``nn.Identity``).
        dropout: The adapter's ``nn.Dropout``, or ``None`` for ``nn.Identity`` (nothing to check per call).
    """

    __slots__ = ("adapter", "dropout", "params_a", "params_b", "registrations")
    params_a: dict[str, Any] | None
    params_b: dict[str, Any] | None

    def __init__(self, adapter: str, registrations: int, params: tuple[Any, Any] | None, dropout: Any) -> None:
        self.adapter, self.registrations, self.dropout = adapter, registrations, dropout
        self.params_a, self.params_b = params if params is not None else (None, None)


def single_plan(layer: Any, adapter: str) -> SinglePlan:
    """Find ``layer``'s :class:`SinglePlan` for ``adapter`` and keep it in ``layer._single_plan``."""
    modules: Any = layer._modules
    containers = modules["lora_A"], modules["lora_B"], modules["lora_dropout"]
    factor_a, factor_b = containers[0]._modules.get(adapter), containers[1]._modules.get(adapter)
    dropout = containers[2]._modules.get(adapter)
    stacked.Registrations.watch([m for m in (layer, *containers, factor_a, factor_b) if m is not None])
    plain = (
        factor_a is not None
        and factor_b is not None
        and not layer.use_dora.get(adapter)
        and adapter not in layer.lora_variant
        and factor_b._parameters.get("bias") is None
        and type(dropout) in (nn.Dropout, nn.Identity)
    )
    params = (factor_a._parameters, factor_b._parameters) if plain else None
    dropout = None if type(dropout) is nn.Identity else dropout
    plan = SinglePlan(adapter, stacked.COUNT["registrations"], params, dropout)
    layer.__dict__["_single_plan"] = plan
    return plan


#: Up to this many rows (tokens times samples) :func:`inference_single` serves a call; longer inputs (prefill)
#: take :func:`fused_single`, whose in-place accumulation saves a pass over the output there.
INFERENCE_MAX_ROWS = 64


def inference_single(layer: Any, plan: SinglePlan, x: torch.Tensor) -> torch.Tensor | None:
    """``base(x) + s B A x`` for a call of at most :data:`INFERENCE_MAX_ROWS` rows that records no adapter gradient
    and drops nothing (decoding), or ``None`` for any other call.

    A hook-free ``nn.Linear`` base is computed here (:func:`direct_single`); any other base is called as a
    module (its hooks, an offload, a quantized or ``Conv1D`` base all act as usual) and the adapter is two
    products on the factor tensors plus one add, ``torch.add(y, (x Aᵀ) Bᵀ, alpha=s)``; none of the checks the
    fused path needs: at one token a LoRA layer's cost is its calls, not its arithmetic. Where the dtypes of
    ``x``, the factors and the base output differ (autocast, a half-precision base) or the scaling is a
    tensor (hot-swap), the output is the layer's formula
    (:meth:`~peftkit.methods.lora.layer.Linear.plain_adapt_output`). Shapes: ``x (..., in) -> (..., out)``.
    """
    params_a, params_b = plan.params_a, plan.params_b
    if params_a is None or params_b is None or x.numel() > INFERENCE_MAX_ROWS * x.shape[-1]:
        return None
    A, B = params_a.get("weight"), params_b.get("weight")
    if A is None or B is None or (torch.is_grad_enabled() and (x.requires_grad or A.requires_grad or B.requires_grad)):
        return None
    dropout = plan.dropout
    if dropout is not None and dropout.training and dropout.p > 0:
        return None
    scaling = layer.scaling[plan.adapter]
    base = layer._modules["base_layer"]
    if type(base) is nn.Linear and type(base._parameters.get("weight")) is nn.Parameter and not has_hooks(base):
        return direct_single(layer, plan, x, (base._parameters["weight"], base._parameters["bias"], A, B), scaling)
    result = base(x)
    if not (result.dtype == x.dtype == A.dtype) or isinstance(scaling, torch.Tensor):
        return layer.plain_adapt_output(result, x, plan.adapter)
    return torch.add(result, F.linear(F.linear(x, A), B), alpha=scaling)


def direct_single(
    layer: Any, plan: SinglePlan, x: torch.Tensor, tensors: tuple[Any, ...], scaling: float | torch.Tensor
) -> torch.Tensor:
    """:func:`inference_single` over a hook-free ``nn.Linear`` base whose weight is a plain ``nn.Parameter``
    (no quantized or distributed tensor subclass): the base's own ``F.linear`` called here rather than through
    its module call, and the adapter accumulated into that fresh output by one GEMM, ``y.addmm_(x Aᵀ, Bᵀ,
    alpha=s)``: two ops instead of three (``nn.Linear.forward`` is ``F.linear(x, W, b)``, so only the module
    call's own cost goes). Under autograd (a trainable base) the sum is taken out of place. ``tensors``:
    ``(W, b, A, B)``.
    Shapes: ``x (..., in) -> (..., out)``.
    """
    weight, bias, A, B = tensors
    flat = x.reshape(-1, x.shape[-1])
    result = F.linear(flat, weight, bias)
    shape = (*x.shape[:-1], result.shape[-1])
    if not (result.dtype == x.dtype == A.dtype) or isinstance(scaling, torch.Tensor):
        return layer.plain_adapt_output(result.view(shape), x, plan.adapter)
    if result.requires_grad:
        return torch.addmm(result, F.linear(flat, A), B.t(), alpha=scaling).view(shape)
    return result.addmm_(F.linear(flat, A), B.t(), alpha=scaling).view(shape)


def fused_single(layer: Any, x: torch.Tensor, adapter: str) -> torch.Tensor | None:
    """Base and adapter in one computation (:func:`~peftkit.methods.lora.autograd.lora_linear`), or ``None``
    where that does not apply: DoRA, ``lora_bias``, a base that is not a hook-free ``nn.Linear`` / ``Conv1D``,
    mixed dtypes or autocast, a tensor scaling while training, and under ``torch.compile``.

    Shapes: ``x (..., in) -> (..., out)``. This runs once per layer and call, so it reads the module
    dictionaries directly instead of going through ``nn.Module.__getattr__`` (slow enough to show in a
    one-token decode).
    """
    modules: Any = layer._modules  # plain dicts of modules; their entries are the types update_layer put there
    factor_a = modules["lora_A"]._modules.get(adapter)
    base = modules["base_layer"]
    if factor_a is None or type(base) not in FUSABLE_BASES or layer.use_dora.get(adapter) or has_hooks(base):
        return None
    if adapter in layer.lora_variant:  # a LoRA variant's own forward (variant.py)
        return None
    factor_b = modules["lora_B"]._modules[adapter]
    if "weight" not in factor_a._parameters or "weight" not in factor_b._parameters:  # e.g. wrapped by FSDP1
        return None
    A, B = factor_a._parameters["weight"], factor_b._parameters["weight"]
    weight, bias = base._parameters["weight"], base._parameters.get("bias")
    if factor_b._parameters.get("bias") is not None or not (x.dtype == weight.dtype == A.dtype):
        return None
    if torch.is_autocast_enabled(x.device.type) or torch.compiler.is_compiling():
        return None
    dropout = modules["lora_dropout"]._modules[adapter]
    p = dropout.p if dropout.training and isinstance(dropout, nn.Dropout) else 0.0
    scaling = layer.scaling[adapter]
    if torch.is_tensor(scaling) and (p > 0 or torch.is_grad_enabled()):
        return None
    return lora_linear(x, weight.t() if layer.fan_in_fan_out else weight, bias, A, B, scaling, p)


def stacked_mixed(layer: Any, x: torch.Tensor, routing: BatchRouting) -> torch.Tensor | None:
    """Mixed batch: ``y_i = base(x_i) + x_i A_t[k_i] B_t[k_i]`` (:mod:`~peftkit.methods.lora.stacked`), or
    ``None`` for DoRA, ``lora_bias``, calls that record adapter gradients, or a batch that does not match the
    routing (the generic path reports it).

    One base forward plus two batched matmuls whatever the number of distinct adapters, over one segment of
    samples per adapter (:mod:`~peftkit.methods.lora.segments`; planned once per call), or on CUDA with
    ``triton`` installed one shrink and one expand kernel over those segments
    (:mod:`~peftkit.methods.lora.sgmv_triton`); the stacks are built once and reused until a weight changes.
    Under ``torch.compile`` the stacks are traced afresh and each sample gathers its own factors (no host-side
    plan, so a new mix does not recompile).
    """
    if x.shape[0] != len(routing) or stacked.needs_grad(layer):
        return None
    if torch.compiler.is_compiling():
        if not stacked.stackable(layer):
            return None
        A_t, B_t = stacked.stack_factors(layer, routing.adapters)
        return stacked.add_routed(layer.base_layer(x), x, A_t, B_t, routing.slots.to(x.device))
    stacks = stacked.cached_stacks(
        layer, routing.adapters, routing.derived("lora-slots-read", lambda: slots_read(routing))
    )
    if stacks is None:
        return None
    A_t, B_t = stacks
    result = layer.base_layer(x)
    if x.is_cuda and triton_available():
        from peftkit.methods.lora import sgmv_triton  # imports triton: only here, and only on CUDA

        sgmv = routing.derived(("lora-sgmv", x.device), lambda: sgmv_plan(routing, x.device))
        return sgmv_triton.add_sgmv(result, x, A_t, B_t, sgmv)
    plan = routing.derived(("lora-segments", x.device), lambda: segment_plan(routing, x.device))
    tokens = x.numel() // (x.shape[0] * x.shape[-1]) if x.shape[0] else 0
    if segments.worth_it(plan, x.shape[0], tokens, A_t.shape[-1]):
        return segments.add_segmented(result, x, A_t, B_t, plan)
    return stacked.add_routed(result, x, A_t, B_t, routing.slots_on(x.device))


@functools.cache
def triton_available() -> bool:
    """Whether ``triton`` can be imported (then mixed batches on CUDA run the Triton SGMV kernels)."""
    return importlib.util.find_spec("triton") is not None


def sgmv_plan(routing: BatchRouting, device: torch.device) -> Any:
    """The routing's :func:`~peftkit.methods.lora.sgmv_triton.plan` on ``device`` (slot ``len(adapters)``: base)."""
    from peftkit.methods.lora import sgmv_triton

    return sgmv_triton.plan(routing.slots.tolist(), len(routing.adapters)).to(device)


def slots_read(routing: BatchRouting) -> tuple[int, ...]:
    """The stack slots a mixed batch reads: each adapter that some sample uses (not the base model's slot)."""
    return tuple(sorted(set(routing.slots.tolist()) - {len(routing.adapters)}))


def segment_plan(routing: BatchRouting, device: torch.device) -> segments.SegmentPlan:
    """The routing's :func:`~peftkit.methods.lora.segments.plan` on ``device`` (slot ``len(adapters)``: base)."""
    return segments.plan(routing.slots.tolist(), len(routing.adapters)).to(device)


def compiled(layer: Any, x: torch.Tensor) -> torch.Tensor | None:
    """The active adapters, summed; ``None`` in training mode, for DoRA / ``lora_bias`` and when adapter
    gradients are recorded.

    Where the call's entry point prepared the layer (``CALL_STATE.prepared``, see :func:`prepare_compiled`) the
    graph reads the concatenated factors built outside it: two products, nothing rebuilt per call, and no
    adapter tensor or setting for dynamo to guard on. Otherwise (the inner model compiled on its own) the
    factors are stacked in the graph from the live weights and the active ones picked by the index tensor
    ``layer._active_slots`` (updated in place by :func:`refresh_active_slots`). Neither reads adapter names, so
    set_adapter and hot-swaps do not recompile.
    """
    factors = layer._compiled_factors if CALL_STATE.prepared else None
    if factors is not None:
        result = layer.base_layer(x)
        if not factors:  # no active adapter in this layer
            return result
        return result + stacked.low_rank_product(x.to(factors[0].dtype), *factors).to(result.dtype)
    if layer.training or not stacked.stackable(layer) or stacked.needs_grad(layer):
        return None
    result = layer.base_layer(x)
    slots = layer._active_slots
    if slots.shape[0] == 0:
        return result
    A_t, B_t = stacked.stack_factors(layer, sorted(layer.lora_A.keys()))
    return stacked.add_active(result, x, A_t, B_t, slots.to(x.device))


def refresh_active_slots(layer: Any) -> None:
    """Recompute ``layer._active_slots`` (positions of the active adapters among the layer's, sorted), in place
    when its size is unchanged so that a compiled graph keeps reading the same tensor."""
    if "lora_A" not in layer._modules or "_active_names" not in layer.__dict__:
        return
    held = layer._modules["lora_A"]._modules
    active = layer.__dict__["_active_names"]
    if len(held) == 1:  # the common case (one adapter per layer) without sorting
        wanted = [0 for name in active if name in held]
    else:
        position = {name: i for i, name in enumerate(sorted(held))}
        wanted = [position[name] for name in active if name in position]
    if wanted == layer.__dict__.get("_active_slot_list"):
        return
    fields = layer.__dict__  # plain attributes (never parameters or buffers): no ``nn.Module.__setattr__``
    fields["_active_slot_list"] = wanted
    current = fields.get("_active_slots")
    if current is not None and current.shape[0] == len(wanted):
        current.copy_(torch.tensor(wanted, dtype=torch.long))
    else:
        fields["_active_slots"] = slot_tensor(wanted, layer.get_base_layer().weight.device)


#: ``(device, slots) -> tensor`` templates: cloning one is several times cheaper than ``torch.tensor`` (or
#: ``torch.zeros`` on ``meta``), and every adapted layer of an injection asks for the same few.
_SLOT_TEMPLATES: dict[tuple[torch.device, tuple[int, ...]], torch.Tensor] = {}


def slot_tensor(slots: list[int], device: torch.device) -> torch.Tensor:
    """A new ``int64`` tensor holding ``slots`` on ``device`` (its own storage: it is updated in place), or for
    no slots a shared empty one (:func:`refresh_active_slots` writes in place only into a tensor of the new size)."""
    key = (device, tuple(slots))
    template = _SLOT_TEMPLATES.get(key)
    if template is None:
        template = torch.tensor(slots, dtype=torch.long, device=device)
        if len(_SLOT_TEMPLATES) < 64:
            _SLOT_TEMPLATES[key] = template
    return template.clone() if slots else template
