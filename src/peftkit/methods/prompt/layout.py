"""The key/value cache layout of a transformers model, read from the model itself rather than a table of types.

Prefix tuning (Li & Liang, 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation") hands every
attention layer ``n`` extra keys and values through the model's cache. What each layer's cache holds -- how many
key/value heads, of which width, whether a layer keeps keys and values at all -- depends on model code that no
config field states in one way (multi-query attention, grouped heads expanded before caching, layers that share
another layer's keys, recurrent layers). So the layout is *observed*: :func:`derive_layout` runs the model once on
a single token with an empty cache of the class the model itself would build (``DynamicCache(config=...)``, whose
per-layer classes follow ``config.layer_types``: full or sliding-window attention, shared-KV placeholders,
linear-attention / convolution states), then reads what each cache layer received: keys of shape
``(1, heads, 1, head_dim)``.

Layers whose cache keeps keys and values (plain or sliding-window) take a prefix; placeholder layers (keys and
values shared with an earlier layer, attention-free layers) take none; any other cache layer (a recurrent or
convolution state, compressed or indexed attention) makes the model refuse a prefix with the reason, since
prepending keys there would mean something else or nothing.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from peftkit.errors import ConfigError

#: (key/value heads, head width) of one cache layer; ``None`` for a layer that keeps no keys and values.
LayerShape = tuple[int, int] | None


@dataclass(frozen=True)
class PrefixLayout:
    """What a model's key/value cache looks like, per decoder (self-attention) layer.

    Attributes:
        encoder_decoder: The model is an encoder-decoder; the prefix goes to the decoder's self-attention cache.
        shapes: Per cache layer, ``(heads, head_dim)`` of its keys and values, or ``None`` when it keeps none.
        cache_config: The config to build a ``DynamicCache`` from (so that sliding-window and placeholder layers
            keep their class), or ``None`` where the installed transformers' cache takes no config.
    """

    encoder_decoder: bool
    shapes: tuple[LayerShape, ...]
    cache_config: Any

    def widest(self) -> tuple[int, int]:
        """``(heads, head_dim)`` of the layer with the widest heads (the first of them): the size a prefix is
        provisioned for when layers differ (narrower layers get a slice of it)."""
        present = [shape for shape in self.shapes if shape is not None]
        return max(present, key=lambda shape: shape[1])


def new_dynamic_cache(config: Any, data: list[tuple[Any, Any]] | None = None) -> Any:
    """A ``DynamicCache`` holding ``data`` (one ``(keys, values)`` pair per layer, ``(None, None)`` for none),
    its layer classes taken from ``config`` when given and the installed cache class accepts one."""
    from transformers import DynamicCache

    if config is not None and "config" in inspect.signature(DynamicCache.__init__).parameters:
        return DynamicCache(data, config=config)
    return DynamicCache(data)


def _probe_inputs(model: nn.Module, encoder_decoder: bool) -> dict[str, torch.Tensor]:
    getter = getattr(model, "get_input_embeddings", None)
    weight = getattr(getter() if callable(getter) else None, "weight", None)
    device = weight.device if isinstance(weight, torch.Tensor) else next(model.parameters()).device
    one = torch.zeros(1, 1, dtype=torch.long, device=device)
    inputs = {"input_ids": one, "attention_mask": torch.ones_like(one)}
    if encoder_decoder:
        start = getattr(model.config, "decoder_start_token_id", None)
        inputs["decoder_input_ids"] = torch.full_like(one, int(start or 0))
    return inputs


def _run_probe(model: nn.Module, cache_keyword: str, encoder_decoder: bool) -> Any:
    """Run ``model`` on one token with an empty cache and return that cache (modules back in their modes)."""
    from transformers import DynamicCache, EncoderDecoderCache

    cache_config = None if encoder_decoder else model.config
    cache: Any = new_dynamic_cache(cache_config)
    if encoder_decoder:
        cache = EncoderDecoderCache(cache, DynamicCache())
    modes = [(module, module.training) for module in model.modules()]
    model.eval()  # no dropout: the probe draws no random numbers, so seeded runs stay reproducible
    try:
        with torch.no_grad():
            model(**_probe_inputs(model, encoder_decoder), **{cache_keyword: cache}, use_cache=True)
    except Exception as error:
        raise ConfigError(
            f"Prefix tuning reads the key/value cache layout of {type(model).__name__} by running it on one token, "
            f"and that failed ({type(error).__name__}: {error}). The model cannot take a prefix as it is; use prompt "
            "tuning, P-tuning or LoRA."
        ) from error
    finally:
        for module, training in modes:
            module.training = training
    return cache.self_attention_cache if encoder_decoder else cache


def _layer_shape(layer: Any, index: int, model_name: str) -> LayerShape:
    """``(heads, head_dim)`` a probed cache layer holds; ``None`` for a placeholder or a layer left empty."""
    from transformers import cache_utils

    keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
    placeholder = getattr(cache_utils, "DummyLayer", None)
    if placeholder is not None and isinstance(layer, placeholder):
        return None  # keys and values shared with another layer, or a layer without attention
    if type(layer) not in (cache_utils.DynamicLayer, cache_utils.DynamicSlidingWindowLayer):
        raise ConfigError(
            f"Layer {index} of {model_name} keeps a {type(layer).__name__} in its cache, not plain keys and values "
            "(a recurrent, convolution, compressed or indexed state), so a key/value prefix has no meaning there. "
            "Use prompt tuning, P-tuning or LoRA for this model."
        )
    if not isinstance(keys, torch.Tensor) or keys.numel() == 0:
        return None  # the model never wrote this layer (its attention reads another layer's keys)
    if keys.dim() != 4 or not isinstance(values, torch.Tensor) or values.shape != keys.shape or keys.shape[2] != 1:
        shown = tuple(values.shape) if isinstance(values, torch.Tensor) else None
        raise ConfigError(
            f"Layer {index} of {model_name} caches keys of shape {tuple(keys.shape)} and values of shape {shown}; "
            "prefix tuning needs keys and values of one shape (batch, heads, tokens, head_dim). Use prompt tuning, "
            "P-tuning or LoRA for this model."
        )
    return int(keys.shape[1]), int(keys.shape[3])


def derive_layout(model: nn.Module, cache_keyword: str) -> PrefixLayout:
    """The :class:`PrefixLayout` of ``model``, observed by one single-token forward (see the module docstring).

    Args:
        model: A transformers model whose ``forward`` takes a key/value cache.
        cache_keyword: The keyword that carries the cache into ``forward`` (``cache`` or ``past_key_values``).

    Raises:
        ConfigError: the forward fails, a layer keeps something other than keys and values, or no layer keeps any.
    """
    config = getattr(model, "config", None)
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    cache = _run_probe(model, cache_keyword, encoder_decoder)
    name = type(model).__name__
    shapes = tuple(_layer_shape(layer, i, name) for i, layer in enumerate(getattr(cache, "layers", ())))
    if not any(shape is not None for shape in shapes):
        raise ConfigError(
            f"{name} wrote no keys or values into the cache it was given, so a prefix would never reach its attention."
            " Use prompt tuning, P-tuning or LoRA for this model."
        )
    return PrefixLayout(encoder_decoder, shapes, None if encoder_decoder else config)
