"""PEFT's ``ensure_weight_tying`` for LoRA: adapters on tied word embeddings stay tied.

In a model with ``tie_word_embeddings`` the output head computes ``logits = h E^T`` with the input embedding's
own table ``E`` (``V x d``). An embedding LoRA adds ``ΔE = s (B_e A_e)^T`` (``A_e: r x V``, ``B_e: d x r``); the
head's LoRA adds ``s B_h A_h`` (``A_h: r x d``, ``B_h: V x r``). With ``A_h = B_e^T`` and ``B_h = A_e^T`` the head's
delta is exactly ``ΔE``: both sides of the tie see the same adapted table. As in PEFT, targeting either side with
``ensure_weight_tying=True`` adapts both, and the head's factors are views of the embedding's (one storage).
"""

from __future__ import annotations

import copy
import warnings

from torch import nn

from peftkit.errors import ConfigError, UnsupportedError
from peftkit.layers.base import AdapterLayer
from peftkit.methods.spec import EMBEDDING_LAYER_NAMES


def tied_embedding_names(model: nn.Module) -> tuple[str, str] | None:
    """``(input embedding name, output embedding name)`` when the two share one weight, else ``None``."""
    getters = (getattr(model, "get_input_embeddings", None), getattr(model, "get_output_embeddings", None))
    if not all(callable(g) for g in getters):
        return None
    try:
        pair = [g() for g in getters]  # type: ignore[misc]  # checked callable above
    except (NotImplementedError, AttributeError):
        return None
    bases = [m.get_base_layer() if isinstance(m, AdapterLayer) else m for m in pair]
    if any(b is None or not isinstance(getattr(b, "weight", None), nn.Parameter) for b in bases):
        return None
    if bases[0].weight is not bases[1].weight:
        return None
    names = {id(m): n for n, m in model.named_modules() if any(m is p for p in pair)}
    found = tuple(names.get(id(m)) for m in pair)
    return found if None not in found else None  # type: ignore[return-value]  # no None left


def prepare_tied_targets(config: object, model: nn.Module) -> object:
    """A copy of a LoRA ``config`` with both sides of tied embeddings targeted when it targets one of them and
    asks for ``ensure_weight_tying``; the config itself unchanged otherwise.

    Raises:
        UnsupportedError: ``ensure_weight_tying`` with a tied layer in ``modules_to_save`` (not implemented).
    """
    if not getattr(config, "ensure_weight_tying", False):
        return config
    tied = tied_embedding_names(model)
    if tied is None:
        warnings.warn("ensure_weight_tying=True, but the model has no tied embeddings; nothing tied.", stacklevel=5)
        return config
    saved = getattr(config, "modules_to_save", None) or []
    if any(name.rsplit(".", 1)[-1] in EMBEDDING_LAYER_NAMES for name in saved):
        raise UnsupportedError(
            "ensure_weight_tying with a tied embedding in modules_to_save is not implemented in peftkit; "
            "target the embedding with LoRA instead, or set ensure_weight_tying=False."
        )
    targets = getattr(config, "target_modules", None)
    if not isinstance(targets, (set, list, tuple)):
        return config
    short = {name.rsplit(".", 1)[-1] for name in tied}
    if not any(t.rsplit(".", 1)[-1] in short for t in targets):
        warnings.warn("ensure_weight_tying=True, but no tied embedding is targeted; nothing tied.", stacklevel=5)
        return config
    completed = copy.copy(config)
    completed.target_modules = set(targets) | set(tied)  # type: ignore[attr-defined]  # a LoraConfig
    return completed


def tie_adapters(config: object, model: nn.Module, adapter: str) -> None:
    """Make the output head's LoRA factors views of the input embedding's (see the module docstring).

    Raises:
        ConfigError: the two sides got different ranks or scalings (a ``rank_pattern`` / ``alpha_pattern`` that
            treats them differently), which no tie can reconcile.
    """
    if not getattr(config, "ensure_weight_tying", False):
        return
    tied = tied_embedding_names(model)
    if tied is None:
        return
    embed, head = (model.get_submodule(name) for name in tied)
    if not (isinstance(embed, AdapterLayer) and isinstance(head, AdapterLayer)):
        return
    if adapter not in embed.lora_embedding_A or adapter not in head.lora_A:  # type: ignore[operator]  # LoRA layers
        return
    if embed.r[adapter] != head.r[adapter] or embed.scaling[adapter] != head.scaling[adapter]:  # type: ignore[index]  # LoRA layers
        raise ConfigError(
            f"ensure_weight_tying: {tied[0]} and {tied[1]} got different ranks or alphas for adapter {adapter!r}; "
            "give both the same r and lora_alpha (rank_pattern / alpha_pattern)."
        )
    head.lora_A[adapter].weight = nn.Parameter(embed.lora_embedding_B[adapter].t())  # type: ignore[index, union-attr]  # LoRA
    head.lora_B[adapter].weight = nn.Parameter(embed.lora_embedding_A[adapter].t())  # type: ignore[index, union-attr]  # LoRA
