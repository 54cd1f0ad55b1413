"""The trainable-tokens method spec: which layers it wraps, its default target, and tied output heads."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from torch import nn

from peftkit.errors import ConfigError
from peftkit.methods.spec import CliOption, MethodSpec
from peftkit.methods.trainable_tokens.config import TrainableTokensConfig
from peftkit.methods.trainable_tokens.layer import TrainableTokensLayer
from peftkit.methods.trainable_tokens.model import TrainableTokensModel
from peftkit.methods.trainable_tokens.tying import tie_output_head
from peftkit.types import PeftType


@dataclass(frozen=True)
class TokenFacts:
    """Per-layer facts: the token ids whose rows train, and whether they start as the original rows."""

    token_indices: tuple[int, ...]
    init: bool = True


def input_embedding_name(model: nn.Module) -> str:
    """The module name of ``model.get_input_embeddings()``, or ``"embed_tokens"`` when it has none (PEFT's)."""
    getter = getattr(model, "get_input_embeddings", None)
    try:
        embedding = getter() if callable(getter) else None
    except (NotImplementedError, AttributeError):
        embedding = None
    for name, module in model.named_modules():
        if embedding is not None and module is embedding:
            return name
    return "embed_tokens"


def complete_config(config: TrainableTokensConfig, model: nn.Module) -> TrainableTokensConfig:
    """A copy with ``target_modules`` set to the input embedding's name when unset (PEFT saves that name)."""
    if config.target_modules is not None:
        return config
    completed = copy.copy(config)
    completed.target_modules = input_embedding_name(model)
    return completed


def tie_heads(config: TrainableTokensConfig, model: nn.Module, adapter: str) -> None:
    """After injection: a tied output head shares the input embedding's trained rows."""
    tie_output_head(model, adapter, TrainableTokensLayer)


def token_ids_from_cli(fields: dict[str, Any], total_steps: int) -> dict[str, Any]:
    """``--token-indices 1,5,9`` -> ``token_indices=[1, 5, 9]``.

    Raises:
        ConfigError: an entry is not an integer.
    """
    text = fields.get("token_indices")
    if isinstance(text, str):
        try:
            fields = {**fields, "token_indices": [int(part) for part in text.split(",") if part.strip()]}
        except ValueError:
            raise ConfigError(f"--token-indices takes comma-separated token ids, got {text!r}.") from None
    return fields


def never_auto(config: object, requested: bool | str) -> bool:
    """PEFT's rule for trainable tokens: whole embedding tables are saved only when asked for explicitly."""
    return requested is True


TRAINABLE_TOKENS = MethodSpec(
    peft_type=PeftType("TRAINABLE_TOKENS"),
    config_class=TrainableTokensConfig,
    model_class_name="TrainableTokensModel",
    prefix="trainable_tokens_",
    layer_table={nn.Embedding: TrainableTokensLayer},
    layer_facts=lambda config, name, module: TokenFacts(tuple(config.token_indices), config.init_weights),
    prepare_config=complete_config,
    after_inject=tie_heads,
    embedding_rule=never_auto,
    tuner_class=TrainableTokensModel,
    public_names={"TrainableTokensConfig": TrainableTokensConfig, "TrainableTokensModel": TrainableTokensModel},
    cli_name="trainable_tokens",
    cli_options=(
        CliOption("token_indices", "token_indices", str, "Token ids whose embedding rows train, comma-separated"),
    ),
    cli_learning_rate=1e-2,
    cli_config=token_ids_from_cli,
)
