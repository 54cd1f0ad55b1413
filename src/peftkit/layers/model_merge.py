"""Merging and unmerging every adapter layer of a model: nothing-to-do warnings, and untying shared weights.

Untying shared base weights before a merge writes into them:

A weight tied to another module (``lm_head.weight is embed_tokens.weight`` with ``tie_word_embeddings``, T5's
shared embedding) must not receive one layer's merged delta: the other module would silently change with it
(the logits of a tied Llama moved by 6 when only ``lm_head`` carried LoRA). Before merging, such a layer gets
its own copy of the weight, so the merged model computes exactly what the unmerged one did.

Order: in a mixed-method model a layer wraps other methods' layers, and the walk yields it before them. Merging
goes innermost first and unmerging outermost first, so that a multiplicative method (OFT, ``W <- W R^T``) wrapping
an additive one rotates the merged sum ``(W + dW) R^T``, which is what its forward computes. (PEFT 0.21.2 merges a
stack of three or more layers in another order, whose merged model can differ from its unmerged one.)
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

from torch import nn

from peftkit.layers.base import AdapterLayer

Named = list[tuple[str, AdapterLayer]]


def shared_with(model: nn.Module, layers: Iterable[tuple[str, AdapterLayer]]) -> dict[str, list[str]]:
    """For each ``(name, layer)`` whose base weight is also held by a module outside that layer: the names of
    those other holders. Layers whose weight is not shared are left out."""
    holders: dict[int, list[str]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for attr, param in module._parameters.items():
            if param is not None:
                holders.setdefault(id(param), []).append(f"{module_name}.{attr}" if module_name else attr)
    shared: dict[str, list[str]] = {}
    for name, layer in layers:
        weight = getattr(layer.get_base_layer(), "weight", None)
        if not isinstance(weight, nn.Parameter):
            continue
        others = [h for h in holders.get(id(weight), []) if not h.startswith(name + ".")]
        if others:
            shared[name] = sorted(set(others))
    return shared


def untie_for_merge(model: nn.Module, layers: Sequence[tuple[str, AdapterLayer]]) -> None:
    """Give every layer in ``layers`` whose base weight is shared its own copy of it, with a warning naming the
    layers; ``config.tie_word_embeddings`` is cleared so that saving and reloading keep the two apart."""
    shared = shared_with(model, layers)
    if not shared:
        return
    for name, layer in layers:
        if name in shared:
            base = layer.get_base_layer()
            base.weight = nn.Parameter(base.weight.detach().clone(), requires_grad=base.weight.requires_grad)
    config = getattr(model, "config", None)
    cleared = ""
    for part in (config, getattr(config, "get_text_config", lambda: None)() if config is not None else None):
        if part is not None and getattr(part, "tie_word_embeddings", False):
            part.tie_word_embeddings = False
            cleared = " and config.tie_word_embeddings set to False"
    described = "; ".join(f"{name} (shared with {', '.join(others)})" for name, others in shared.items())
    warnings.warn(
        f"Merging into tied weights would change the modules they are tied to: {described}. These layers now have "
        f"their own copy of the weight{cleared}, so the merged model computes what the unmerged one did.",
        stacklevel=4,
    )


def merge_layers(model: nn.Module, layers: Named, adapter_names: Sequence[str] | None, safe_merge: bool) -> None:
    """Merge ``adapter_names`` (default: each layer's active adapters) into every layer of ``layers``, untying
    shared weights first. Warns (``UserWarning``) and changes nothing when all of them are merged already."""
    pending = any(
        name not in layer.merged_adapters and layer.holds(name)
        for _, layer in layers
        for name in (adapter_names if adapter_names is not None else layer.active_adapters)
    )
    if layers and not pending:
        warnings.warn("All adapters are already merged; merge_adapter() has nothing to do.", stacklevel=4)
        return
    for _, layer in layers:  # refuse before anything is written
        for name in adapter_names if adapter_names is not None else layer.active_adapters:
            if layer.holds(name):
                layer.check_mergeable(name)
    untie_for_merge(model, layers)
    for _, layer in reversed(layers):  # innermost first (module docstring)
        layer.merge(safe_merge=safe_merge, adapter_names=adapter_names)


def unmerge_layers(layers: Named) -> None:
    """Undo every merge in ``layers``. Warns (``UserWarning``) and changes nothing when no adapter is merged."""
    if layers and not any(layer.merged_adapters for _, layer in layers):
        warnings.warn("No adapter is merged; unmerge_adapter() has nothing to do.", stacklevel=4)
        return
    for _, layer in layers:
        layer.unmerge()
