"""Trainable tokens on tied embeddings: every module that shares the adapted table follows it.

transformers ties embeddings by giving several modules one ``Parameter``: the output head (``logits = h E^T``,
``tie_word_embeddings``) and, in encoder-decoder models, the encoder's and decoder's input embeddings
(T5's ``shared``, ``encoder.embed_tokens``, ``decoder.embed_tokens`` and ``lm_head``). When an adapter trains
rows of ``E``, each of those modules is wrapped too and shares the rows (the same ``Parameter``), so every side
sees one adapted table, as in PEFT (whose ``TrainableTokensConfig`` files hold every wrapped module's copy).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from peftkit.layers.base import AdapterLayer
from peftkit.layers.wrap import replace_module
from peftkit.methods.trainable_tokens.layer import TrainableTokensLayer


def base_weight(module: nn.Module) -> torch.Tensor | None:
    """The weight ``Parameter`` a module computes with (an adapter layer's or wrapper's base layer's)."""
    weight = getattr(module.get_base_layer() if isinstance(module, AdapterLayer) else module, "weight", None)
    return weight if isinstance(weight, nn.Parameter) else None


def tied_modules(model: nn.Module, source: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(name, module)`` of every module other than ``source`` whose weight is ``source``'s weight (the same
    ``Parameter``); adapter layers are not looked into (their base layer is theirs)."""
    weight = base_weight(source)
    if weight is None:
        return
    stack: list[tuple[str, nn.Module]] = [("", model)]
    while stack:
        prefix, parent = stack.pop()
        for name, child in parent.named_children():
            if child is source:
                continue
            if base_weight(child) is weight:
                yield prefix + name, child
            elif not isinstance(child, AdapterLayer):
                stack.append((prefix + name + ".", child))


def tie_output_head(model: nn.Module, adapter: str, layer_class: type[TrainableTokensLayer]) -> list[str]:
    """Give every module tied to a table that holds ``adapter`` that adapter's rows (wrapping it in
    ``layer_class``); a module adapted by another method keeps its own weights.

    Returns:
        The names of the modules now tied to an adapted table.
    """
    sources = [m for m in model.modules() if isinstance(m, TrainableTokensLayer) and adapter in m.token_indices]
    done: set[int] = set()
    names = []
    for source in sources:
        weight = base_weight(source)
        if weight is None or id(weight) in done:
            continue
        done.add(id(weight))
        for name, module in list(tied_modules(model, source)):
            if isinstance(module, AdapterLayer) and not isinstance(module, TrainableTokensLayer):
                continue
            if not isinstance(module, TrainableTokensLayer):
                module = layer_class(module)
                replace_module(model, name, module)
            module.tie_to(source, adapter)
            names.append(name)
    return names
