"""Prefix tuning's key/value prefix in the form each model's cache expects (transformers ``Cache`` objects).

The prefix encoder yields, per sample, ``(n, 2 * L * token_dim)``: for each of the ``n`` virtual tokens a key
and a value for each of the ``L`` layers, ``H`` heads of width ``D = token_dim / H``. It is laid out as

    flat (B, n, 2L*H*D) -> (B, n, 2L, H, D) -> rows (2L, B, H, n, D),

row ``2i`` the keys and row ``2i + 1`` the values of layer ``i``. Where they go follows the model's
:class:`~peftkit.methods.prompt.layout.PrefixLayout` (observed from the model, not looked up by model type):

* decoder-only and encoder-only models: a ``DynamicCache`` (built from the model's config, so sliding-window
  layers keep their window) whose layer ``i`` holds rows ``(2i, 2i + 1)``;
* encoder-decoder models: an ``EncoderDecoderCache`` whose *self-attention* cache layer ``i`` holds rows
  ``(4i mod 2L, 4i + 1 mod 2L)`` -- PEFT stacks the rows twice and takes every fourth pair, so this mapping is
  what makes adapters trained with PEFT compute the same -- and an empty cross-attention cache (the encoder
  output changes with every input, so it is never prefixed).

A layer whose cache holds fewer heads or narrower heads than provisioned (models whose layers differ) gets the
leading ``h`` heads and ``d`` channels of its rows; a layer that keeps no keys and values, or wider ones than
provisioned, gets none (:func:`fitted_shapes`, with PEFT's rule for heterogeneous attention).

The keyword that carries the cache into ``forward`` and out of ``prepare_inputs_for_generation`` is read from
the installed model's signature (:func:`cache_argument`): transformers renamed ``past_key_values`` to ``cache``,
and the old name is then only accepted through a shim that drops it when both are passed.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from peftkit.config import PromptLearningConfig
from peftkit.errors import ConfigError, UnsupportedError
from peftkit.methods.prompt.layout import LayerShape, PrefixLayout, new_dynamic_cache

#: The names transformers has given the key/value cache argument of ``forward``, newest first.
CACHE_ARGUMENTS = ("cache", "past_key_values")


def cache_argument(function: Callable[..., Any]) -> str | None:
    """The keyword under which ``function`` (a model's ``forward`` or ``prepare_inputs_for_generation``, bound
    or not) takes the key/value cache, read from its signature (decorators that keep ``__wrapped__`` are seen
    through); ``None`` when it lists none of :data:`CACHE_ARGUMENTS`. Cached per underlying function."""
    return _listed_cache_argument(getattr(function, "__func__", function))


@functools.lru_cache(maxsize=256)
def _listed_cache_argument(function: Callable[..., Any]) -> str | None:
    parameters = inspect.signature(function).parameters
    return next((name for name in CACHE_ARGUMENTS if name in parameters), None)


def forward_cache_argument(model: nn.Module) -> str:
    """The keyword that carries a key/value cache into ``model.forward``.

    Raises:
        UnsupportedError: ``model.forward`` takes no cache, so a key/value prefix cannot reach its attention.
    """
    name = cache_argument(model.forward)
    backbone = getattr(model, "base_model", None)
    if name is None and _passes_keywords(model.forward) and isinstance(backbone, nn.Module) and backbone is not model:
        name = cache_argument(backbone.forward)  # a task head that hands its **kwargs on to the backbone (BERT)
    if name is None:
        raise UnsupportedError(
            f"{type(model).__name__}.forward takes no key/value cache argument (none of {', '.join(CACHE_ARGUMENTS)}),"
            " so prefix tuning cannot reach its attention layers. Use prompt tuning, P-tuning or LoRA for this model."
        )
    return name


def _passes_keywords(function: Callable[..., Any]) -> bool:
    parameters = inspect.signature(function).parameters.values()
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def generation_cache_key(prepare: Callable[..., Any], model: nn.Module) -> str | None:
    """The key under which ``prepare`` (``model``'s ``prepare_inputs_for_generation``) returns the cache: the
    name its signature lists, else the one ``model.forward`` takes; ``None`` for a model without a cache."""
    return cache_argument(prepare) or cache_argument(model.forward)


def layer_rows(flat: torch.Tensor, config: PromptLearningConfig) -> torch.Tensor:
    """``(B, n, 2L*H*D)`` prefix -> ``(2L, B, H, n, D)`` rows (keys and values of each layer, alternating)."""
    batch, n = flat.shape[:2]
    heads = int(config.num_attention_heads)  # type: ignore[arg-type]  # prompt dimensions are filled in from the model config before this runs
    head_dim = int(config.token_dim) // heads  # type: ignore[arg-type]  # prompt dimensions are filled in from the model config before this runs
    return flat.view(batch, n, 2 * int(config.num_layers), heads, head_dim).permute(2, 0, 3, 1, 4)  # type: ignore[arg-type]  # prompt dimensions are filled in from the model config before this runs


def fitted_shapes(config: PromptLearningConfig, layout: PrefixLayout) -> list[LayerShape]:
    """Per prefix layer, the ``(heads, head_dim)`` slice of its rows that goes into the cache, or ``None``.

    A layer takes the prefix when its cache holds at most the provisioned ``H`` heads of at most ``D = token_dim
    / H`` channels (the leading ones are used); layers beyond the model's cache, placeholder layers and wider
    layers take none.
    """
    heads = int(config.num_attention_heads)  # type: ignore[arg-type]  # prompt dimensions are filled in from the model config before this runs
    head_dim = int(config.token_dim) // heads  # type: ignore[arg-type]  # prompt dimensions are filled in from the model config before this runs
    fitted: list[LayerShape] = []
    for i in range(int(config.num_layers)):  # type: ignore[arg-type]  # prompt dimensions are filled in from the model config before this runs
        shape = layout.shapes[i] if i < len(layout.shapes) else None
        fitted.append(shape if shape is not None and shape[0] <= heads and shape[1] <= head_dim else None)
    return fitted


def check_fit(config: PromptLearningConfig, layout: PrefixLayout, model_name: str) -> None:
    """Check at creation that the prefix fits the model's cache; warn about layers that get none.

    Raises:
        ConfigError: no cache layer has exactly the provisioned shape (the prefix was sized for another model).
    """
    heads = int(config.num_attention_heads)  # type: ignore[arg-type]  # prompt dimensions are filled in from the model config before this runs
    wanted = (heads, int(config.token_dim) // heads)  # type: ignore[arg-type]  # prompt dimensions are filled in from the model config before this runs
    if wanted not in layout.shapes[: int(config.num_layers)]:  # type: ignore[arg-type]  # prompt dimensions are filled in from the model config before this runs
        found = sorted({shape for shape in layout.shapes if shape is not None})
        raise ConfigError(
            f"The prefix is sized for {wanted[0]} key/value heads of width {wanted[1]} (num_attention_heads="
            f"{config.num_attention_heads}, token_dim={config.token_dim}), but the cache layers of {model_name} hold "
            f"(heads, width) {found}. Leave num_attention_heads and token_dim unset to size the prefix from the model."
        )
    fitted = fitted_shapes(config, layout)
    skipped = [i for i, shape in enumerate(fitted) if shape is None]
    if skipped:
        taken = [i for i, shape in enumerate(fitted) if shape is not None]
        warnings.warn(
            f"Prefix tuning reaches layers {taken} of {model_name}; layers {skipped} keep no keys and values of their "
            "own (shared with another layer, or no attention) or wider ones than the prefix, and get none.",
            stacklevel=5,
        )


def build_cache(flat: torch.Tensor, config: PromptLearningConfig, layout: PrefixLayout) -> object:
    """The transformers cache that holds the prefix ``flat`` (``(B, n, 2L*H*D)``) for a model of ``layout``."""
    from transformers import DynamicCache, EncoderDecoderCache

    rows = layer_rows(flat, config)
    num_rows = rows.shape[0]
    step = 4 if layout.encoder_decoder else 2
    pairs: list[tuple[Any, Any]] = []
    for i, shape in enumerate(fitted_shapes(config, layout)):
        if shape is None:
            pairs.append((None, None))
            continue
        heads, head_dim = shape
        keys, values = rows[(step * i) % num_rows], rows[(step * i + 1) % num_rows]
        pairs.append((keys[:, :heads, :, :head_dim], values[:, :heads, :, :head_dim]))
    if layout.encoder_decoder:
        return EncoderDecoderCache(DynamicCache(pairs), DynamicCache())
    return new_dynamic_cache(layout.cache_config, pairs)
