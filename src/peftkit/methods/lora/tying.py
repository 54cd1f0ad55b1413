"""PEFT's ``ensure_weight_tying`` for LoRA: adapters on tied word embeddings stay tied.

In a model with ``tie_word_embeddings`` the output head computes ``logits = h E^T`` with the input embedding's
own table ``E`` (``V x d``). An embedding LoRA adds ``ΔE = s (B_e A_e)^T`` (``A_e: r x V``, ``B_e: d x r``); the
head's LoRA adds ``s B_h A_h`` (``A_h: r x d``, ``B_h: V x r``). With ``A_h = B_e^T`` and ``B_h = A_e^T`` the head's
delta is exactly ``ΔE``: both sides of the tie see the same adapted table. As in PEFT, targeting either side with
``ensure_weight_tying=True`` adapts both, and the head's factors are views of the embedding's (one storage).
"""

from __future__ import annotations

import copy
import re
import warnings

from torch import nn

from peftkit.errors import ConfigError, UnsupportedError
from peftkit.layers.base import AdapterLayer
from peftkit.methods.spec import EMBEDDING_LAYER_NAMES
from peftkit.targeting import name_matches


def _base(module: nn.Module | None) -> nn.Module | None:
    return module.get_base_layer() if isinstance(module, AdapterLayer) else module


def _output_embedding(model: nn.Module, embedding: nn.Module) -> nn.Module | None:
    """The model's output embedding (``get_output_embeddings()``), or, for a model without that method (a custom
    model that ties by assignment, ``lm_head.weight = embed.weight``), the one module other than embeddings that
    holds the input embedding's very weight (``None`` when there is none, or several)."""
    getter = getattr(model, "get_output_embeddings", None)
    if callable(getter):
        try:
            return getter()
        except (NotImplementedError, AttributeError):
            return None
    weight = getattr(_base(embedding), "weight", None)
    seen = {id(_base(embedding))}
    outputs = []
    for _, module in model.named_modules():  # an adapter layer comes before its base layer, which is then skipped
        base = _base(module)
        if id(base) in seen or getattr(base, "weight", None) is not weight:
            continue
        seen.add(id(base))
        if not isinstance(base, nn.Embedding):  # other embeddings may share the table too (encoder-decoder models)
            outputs.append(module)
    return outputs[0] if len(outputs) == 1 else None


def tied_embedding_names(model: nn.Module) -> tuple[str, str] | None:
    """``(input embedding name, output embedding name)`` when the two share one weight, else ``None`` (also when
    the model's config says ``tie_word_embeddings=False``: that checkpoint is not meant to be tied, as in PEFT)."""
    if getattr(getattr(model, "config", None), "tie_word_embeddings", None) is False:
        return None
    getter = getattr(model, "get_input_embeddings", None)
    if not callable(getter):
        return None
    try:
        embedding = getter()
    except (NotImplementedError, AttributeError):
        return None
    if not isinstance(embedding, nn.Module):
        return None
    pair = [embedding, _output_embedding(model, embedding)]
    bases = [_base(m) for m in pair]
    if any(b is None or not isinstance(getattr(b, "weight", None), nn.Parameter) for b in bases):
        return None
    if bases[0].weight is not bases[1].weight:  # type: ignore[union-attr]  # checked not None above
        return None
    names = {id(m): n for n, m in model.named_modules() if any(m is p for p in pair)}
    found = tuple(names.get(id(m)) for m in pair)
    return found if None not in found else None  # type: ignore[return-value]  # no None left


def embedding_aliases(model: nn.Module, embedding_name: str) -> list[str]:
    """Names of the other ``nn.Embedding`` modules holding the input embedding's very weight (an encoder-decoder
    model's ``encoder.embed_tokens`` / ``decoder.embed_tokens`` beside ``shared``, when they are separate modules),
    in model order. With ``ensure_weight_tying`` PEFT adapts them too (each with factors of its own)."""
    embedding = _base(model.get_submodule(embedding_name))
    weight = getattr(embedding, "weight", None)
    names: list[str] = []
    for name, module in model.named_modules():
        base = _base(module)
        if base is embedding or not isinstance(base, nn.Embedding) or base.weight is not weight:
            continue
        if not any(name.startswith(n + ".") for n in names):  # an adapter layer's own base layer
            names.append(name)
    return names


def warn_untied_adapter(config: object, model: nn.Module) -> None:
    """Warn (as PEFT) when ``config`` adapts or fully trains one side of tied word embeddings without
    ``ensure_weight_tying``: the two sides then drift apart (the adapted side no longer equals the other), which
    breaks merging into the tied weight and exports that store the table once."""
    if getattr(config, "ensure_weight_tying", False):
        return
    targets = getattr(config, "target_modules", None)
    listed = list(getattr(config, "modules_to_save", None) or [])
    listed += list(targets) if isinstance(targets, (set, list, tuple)) else []
    if not any(name.rsplit(".", 1)[-1] in EMBEDDING_LAYER_NAMES for name in listed):
        return
    tied = tied_embedding_names(model)
    if tied is not None:
        warnings.warn(
            f"{tied[0]} and {tied[1]} share one weight (tied word embeddings) and this adapter adapts or trains "
            "one of them with ensure_weight_tying=False: the two will differ after training, so merging or "
            "exporting the tied weight gives wrong results. Set ensure_weight_tying=True to keep them tied.",
            stacklevel=5,
        )


def prepare_tied_targets(config: object, model: nn.Module) -> object:
    """A copy of a LoRA ``config`` with both sides of tied embeddings targeted when it targets one of them and
    asks for ``ensure_weight_tying``; the config itself unchanged otherwise.

    Raises:
        UnsupportedError: ``ensure_weight_tying`` with a tied layer in ``modules_to_save`` (not implemented).
    """
    if not getattr(config, "ensure_weight_tying", False):
        warn_untied_adapter(config, model)
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
    every = [*tied, *embedding_aliases(model, tied[0])]
    if not isinstance(targets, (str, set, list, tuple)) or not any(name_matches(name, targets) for name in every):
        warnings.warn("ensure_weight_tying=True, but no tied embedding is targeted; nothing tied.", stacklevel=5)
        return config
    completed = copy.copy(config)
    if isinstance(targets, str):  # a regex: widened to every tied module, stored so (a load selects the same ones)
        completed.target_modules = f"(?:{targets}|{'|'.join(f'^{re.escape(n)}$' for n in every)})"  # type: ignore[attr-defined]  # a LoraConfig
    else:
        completed.target_modules = set(targets) | set(every)  # type: ignore[attr-defined]  # a LoraConfig
    return completed


def tie_adapters(config: object, model: nn.Module, adapter: str) -> None:
    """Make the output head's LoRA factors views of the input embedding's (see the module docstring). Other
    embeddings sharing the table (:func:`embedding_aliases`) keep factors of their own, as in PEFT, so that files
    move between the libraries unchanged.

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
