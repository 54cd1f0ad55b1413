"""Filling a prompt config's model dimensions from the base model's config, with PEFT's rules.

A prompt config may leave ``num_layers``, ``token_dim``, ``num_attention_heads``, ``encoder_hidden_size`` and
``num_transformer_submodules`` unset; they are read from the transformers config (names differ per family:
``hidden_size`` / ``n_embd`` / ``d_model`` ...). The filled values are saved in ``adapter_config.json``, so the
rules must match PEFT's exactly. For prefix tuning on models with grouped-query attention, the prefix holds
one key/value per *key-value* head: ``token_dim = head_dim * num_key_value_heads``.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from peftkit.config import PromptLearningConfig
from peftkit.errors import ConfigError
from peftkit.types import TaskType

#: Config keys tried in order for each dimension (the first one present wins).
_LAYER_KEYS = ("num_hidden_layers", "num_layers", "n_layer")
_WIDTH_KEYS = ("hidden_size", "n_embd", "d_model")
_HEAD_KEYS = ("num_attention_heads", "n_head", "num_heads", "encoder_attention_heads")


def model_config_dict(model: nn.Module) -> tuple[Any, dict[str, Any]]:
    """``(config_object, config_dict)`` of a transformers model (the text part of a multimodal one)."""
    config = getattr(model, "config", None)
    if config is None:
        return None, {}
    data = config.to_dict() if hasattr(config, "to_dict") else dict(vars(config))
    return config, data.get("text_config") or data


def _first(data: dict[str, Any], keys: tuple[str, ...], field_name: str, config: PromptLearningConfig) -> int:
    for key in keys:
        if data.get(key) is not None:
            return int(data[key])
    raise ConfigError(
        f"Cannot read {field_name} from the model config (looked for {', '.join(keys)}); set "
        f"{type(config).__name__}.{field_name} explicitly."
    )


def fill_dimensions(
    config: PromptLearningConfig, model: nn.Module, kv_prefix: bool, kv_shape: tuple[int, int] | None = None
) -> PromptLearningConfig:
    """A copy of ``config`` with every unset model dimension filled in from ``model.config``.

    Args:
        config: The user's prompt config (not modified).
        model: The base model.
        kv_prefix: The method prepends keys/values to every layer (prefix tuning): sized per key-value head.
        kv_shape: ``(heads, head_dim)`` the model's cache actually holds (its widest layer, observed by
            :func:`~peftkit.methods.prompt.layout.derive_layout`). When the user set neither
            ``num_attention_heads`` nor ``token_dim``, the prefix is sized to it (``token_dim = heads * head_dim``):
            where the config rules above are right this changes nothing, and where model code caches another
            shape than the config states (Falcon's multi-query attention) it is what the attention reads.

    Raises:
        ConfigError: a dimension is unset and cannot be read from the model config.
    """
    config = copy.deepcopy(config)
    sized_by_user = config.num_attention_heads is not None or config.token_dim is not None
    if config.num_virtual_tokens is None:
        raise ConfigError(f"{type(config).__name__}.num_virtual_tokens is required (a positive integer).")
    model_config, data = model_config_dict(model)
    if config.num_layers is None:
        from_attr = getattr(model_config, "num_hidden_layers", None)
        config.num_layers = int(from_attr) if from_attr is not None else _first(data, _LAYER_KEYS, "num_layers", config)
    if kv_shape is not None and not sized_by_user:
        config.num_attention_heads, config.token_dim = kv_shape[0], kv_shape[0] * kv_shape[1]
    if config.token_dim is None:
        config.token_dim = _first(data, _WIDTH_KEYS, "token_dim", config)
    if config.num_attention_heads is None:
        config.num_attention_heads = _first(data, _HEAD_KEYS, "num_attention_heads", config)
    if kv_prefix and "num_key_value_heads" in data and (kv_shape is None or sized_by_user):
        head_dim = data.get("head_dim") or config.token_dim // config.num_attention_heads
        config.num_attention_heads = int(data["num_key_value_heads"])
        config.token_dim = int(head_dim) * config.num_attention_heads
    if hasattr(config, "encoder_hidden_size") and config.encoder_hidden_size is None:
        config.encoder_hidden_size = config.token_dim
    if config.num_transformer_submodules is None:
        config.num_transformer_submodules = 2 if config.task_type == TaskType.SEQ_2_SEQ_LM else 1
    return config
