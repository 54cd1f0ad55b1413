"""Prefix tuning's key/value prefix in the form each model's cache expects (transformers ``Cache`` objects).

The prefix encoder yields, per sample, ``(n, 2 * L * token_dim)``: for each of the ``n`` virtual tokens a key
and a value for each of the ``L`` layers, ``H`` heads of width ``D = token_dim / H``. It is laid out as

    flat (B, n, 2L*H*D) -> (B, n, 2L, H, D) -> rows (2L, B, H, n, D),

row ``2i`` the keys and row ``2i + 1`` the values of layer ``i``. Two cache layouts exist:

* ``"decoder"`` (decoder-only models): a ``DynamicCache`` whose layer ``i`` holds rows ``(2i, 2i + 1)``.
* ``"encoder_decoder"``: an ``EncoderDecoderCache`` whose *self-attention* cache layer ``i`` holds rows
  ``(4i mod 2L, 4i + 1 mod 2L)`` -- PEFT stacks the rows twice and takes every fourth pair, so this mapping is
  what makes adapters trained with PEFT compute the same -- and an empty cross-attention cache (the encoder
  output changes with every input, so it is never prefixed).

Models whose cache has another form (hybrid / sliding-window caches, fused multi-query caches, models without a
cache) are refused with a clear error instead of computing something wrong.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from peftkit.config import PromptLearningConfig
from peftkit.errors import ConfigError

CacheLayout = Literal["decoder", "encoder_decoder"]

#: model_type -> cache layout, for the architectures whose attention reads a standard per-layer key/value cache.
CACHE_LAYOUTS: dict[str, CacheLayout] = {
    **dict.fromkeys(
        (
            "llama",
            "mistral",
            "mixtral",
            "qwen2",
            "qwen3",
            "gpt2",
            "gpt_neox",
            "gptj",
            "opt",
            "phi",
            "phi3",
            "gemma",
            "olmo",
            "olmo2",
            "granite",
            "stablelm",
            "starcoder2",
        ),
        "decoder",
    ),
    **dict.fromkeys(("t5", "mt5", "bart", "mbart", "pegasus", "marian"), "encoder_decoder"),
}


def cache_layout(model: nn.Module) -> CacheLayout:
    """The cache layout of ``model``'s architecture.

    Raises:
        ConfigError: the model type has no known cache layout (prefix tuning cannot be applied safely).
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    layout = CACHE_LAYOUTS.get(model_type or "")
    if layout is None:
        known = ", ".join(sorted(CACHE_LAYOUTS))
        raise ConfigError(
            f"Prefix tuning needs the model's key/value cache layout, and model type {model_type!r} has none known "
            f"to peftkit (known: {known}). Use prompt tuning or P-tuning for this model, or LoRA."
        )
    return layout


def layer_rows(flat: torch.Tensor, config: PromptLearningConfig) -> torch.Tensor:
    """``(B, n, 2L*H*D)`` prefix -> ``(2L, B, H, n, D)`` rows (keys and values of each layer, alternating)."""
    batch, n = flat.shape[:2]
    heads = int(config.num_attention_heads)  # type: ignore[arg-type]  # prompt dimensions are filled in from the model config before this runs
    head_dim = int(config.token_dim) // heads  # type: ignore[arg-type]  # prompt dimensions are filled in from the model config before this runs
    return flat.view(batch, n, 2 * int(config.num_layers), heads, head_dim).permute(2, 0, 3, 1, 4)  # type: ignore[arg-type]  # prompt dimensions are filled in from the model config before this runs


def build_cache(flat: torch.Tensor, config: PromptLearningConfig, layout: CacheLayout) -> object:
    """The transformers cache that holds the prefix ``flat`` (``(B, n, 2L*H*D)``) for a model of ``layout``."""
    from transformers import DynamicCache, EncoderDecoderCache

    rows = layer_rows(flat, config)
    num_rows = rows.shape[0]
    num_layers = num_rows // 2
    if layout == "decoder":
        return DynamicCache([(rows[2 * i], rows[2 * i + 1]) for i in range(num_layers)])
    pairs = [(rows[(4 * i) % num_rows], rows[(4 * i + 1) % num_rows]) for i in range(num_layers)]
    return EncoderDecoderCache(DynamicCache(pairs), DynamicCache())
