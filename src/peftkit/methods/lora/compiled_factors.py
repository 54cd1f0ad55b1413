"""What a compiled LoRA call reads, prepared outside the graph: the active adapters' factors, concatenated
with their scalings folded in (read by :func:`~peftkit.methods.lora.fast_paths.compiled`), rebuilt at the
entry of a compiled call only when something they were built from changed (see
:mod:`peftkit.layers.compiled_call` and :mod:`peftkit.layers.watch`).

``layer`` is a LoRA :class:`~peftkit.methods.lora.layer.Linear` (typed ``Any``: that module imports this one).
"""

from __future__ import annotations

import operator
from typing import Any

import torch

from peftkit.layers.watch import Watch
from peftkit.methods.lora import stacked


def _factor_stamp(layer: Any) -> tuple[tuple[str, ...], list[Any], list[int]] | None:
    """What the compiled factors are built from: the active adapters the layer holds, the very weight and
    scaling objects, and the versions of those that are tensors (in-place edits bump them); ``None`` where the
    factors do not apply: training mode, an active adapter with DoRA, a ``lora_B`` bias or a weight that is not
    a plain parameter, or one that records gradients now."""
    if layer.training:
        return None
    factors_a, factors_b = layer._modules["lora_A"]._modules, layer._modules["lora_B"]._modules
    names = tuple(name for name in layer.__dict__["_active_names"] if name in factors_a)
    objects: list[Any] = []
    for name in names:
        weight_a, module_b = factors_a[name]._parameters.get("weight"), factors_b[name]
        weight_b = module_b._parameters.get("weight")
        if weight_a is None or weight_b is None or module_b._parameters.get("bias") is not None:
            return None
        if layer.use_dora.get(name) or name in layer.lora_variant:
            return None
        objects += (weight_a, weight_b, layer.scaling[name])
    if torch.is_grad_enabled() and any(obj.requires_grad for obj in objects if isinstance(obj, torch.Tensor)):
        return None
    return names, objects, [t._version for t in objects if isinstance(t, torch.Tensor)]


def prepare_compiled(layer: Any) -> Watch | None:
    """Rebuild ``layer._compiled_factors`` (read by :func:`compiled`) unless nothing it depends on changed.

    ``(A_cat (in, n R), B_cat (n R, out))`` of the ``n`` active adapters with their scalings folded in
    (:func:`~peftkit.methods.lora.stacked.concatenated_factors`), ``R`` the largest rank the layer holds (so
    switching to an adapter of another rank keeps the shapes, hence the graph); ``()`` with no active adapter;
    ``None`` where they do not apply (see :func:`_factor_stamp`: the graph then takes the general path). Runs
    eagerly at the entry of a compiled call: a changed active set, a replaced weight or scaling, or a weight
    edited in place (its version) triggers the rebuild. Returns what the factors were built from
    (:func:`_factor_watch`), or ``None`` where they do not apply.
    """
    stacked.Registrations.install()  # before the first trace, or installing them later recompiles the model
    stamp = _factor_stamp(layer)
    if stamp is None:
        layer.__dict__.update(_compiled_factors=None, _compiled_stamp=None)
        return None
    names, objects, versions = stamp
    held = layer._compiled_stamp
    fresh = held is not None and held[0] == names and held[2] == versions and len(held[1]) == len(objects)
    if not fresh or not all(map(operator.is_, held[1], objects)):
        factors: tuple[torch.Tensor, ...] = ()
        if names:
            rank = max(module.weight.shape[0] for module in layer._modules["lora_A"]._modules.values())
            factors = stacked.concatenated_factors(layer, names, rank)
        layer.__dict__.update(_compiled_factors=factors, _compiled_stamp=stamp)
    return _factor_watch(layer)


def _factor_watch(layer: Any) -> Watch | None:
    """Everything :func:`_factor_stamp` reads, as a :class:`~peftkit.layers.watch.Watch` (the entry point checks
    all layers' watches at once, and calls :func:`prepare_compiled` again only when one of them changed): the
    prepared factors, the active list and each active adapter's scaling; the process-wide count of module and
    parameter registrations on watched modules (:class:`~peftkit.methods.lora.stacked.Registrations`: the layer,
    its factor containers and factor modules, so a replaced container or module moves it); each weight's
    ``_parameters`` entry (written straight there, as accelerate does, no hook runs); the versions
    of the tensors read (DoRA, variants and ``lora_bias`` change only through ``update_layer``, whose API call
    moves the lock generation)."""
    if type(layer.scaling) is not dict:
        return None  # a mapping of another kind: check this layer on every call
    containers = [layer._modules["lora_A"], layer._modules["lora_B"]]
    watch = Watch()
    watch.entry(layer.__dict__, "_compiled_factors")
    active = watch.entry(layer.__dict__, "_active_names")  # replaced by every switch (the layer's setter)
    for name in active:
        modules = [container._modules.get(name) for container in containers]
        if None in modules:
            continue
        stacked.Registrations.watch([layer, *containers, *modules])
        read = [watch.entry(module._parameters, "weight") for module in modules]  # accelerate writes there
        read.append(watch.entry(layer.scaling, name))
        watch.tensors += [t for t in read if isinstance(t, torch.Tensor)]
    watch.entry(stacked.COUNT, "registrations")  # last: after the watching above
    return watch
