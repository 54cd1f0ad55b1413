"""The prefix tuning encoder: per virtual token, a key and a value for every layer (``2 * L * token_dim``)."""

from __future__ import annotations

import torch
from torch import nn

from peftkit.methods.prefix_tuning.config import PrefixTuningConfig
from peftkit.methods.prompt.encoder import PromptEncoderBase


class PrefixEncoder(PromptEncoderBase):
    """Prefix tuning's encoder. Without projection ``embedding.weight`` ``(n, 2 * L * token_dim)`` is the prefix;
    with ``prefix_projection`` the prefix is ``transform(E)``, ``E = embedding.weight`` ``(n, token_dim)`` and
    ``transform = Linear(token_dim, hidden) -> tanh -> Linear(hidden, 2 * L * token_dim)``.

    The output is reshaped into each layer's keys and values by :mod:`peftkit.methods.prompt.cache`.

    Args:
        config: The prefix tuning config, with model dimensions filled in.
        word_embeddings: Unused (the prefix does not start from word embeddings).
        init_weights: ``False`` skips ``init_weights="zero"`` (weights are about to be loaded).

    Input ``(batch, n)`` ids -> output ``(batch, n, 2 * L * token_dim)``.
    """

    kv_prefix = True

    def __init__(
        self, config: PrefixTuningConfig, word_embeddings: nn.Module | None = None, init_weights: bool = True
    ) -> None:
        super().__init__(config, table=config.inference_mode)
        self.prefix_projection = bool(config.prefix_projection) and not self.table
        zero = init_weights and config.init_weights == "zero"
        if self.prefix_projection:
            hidden = int(config.encoder_hidden_size or config.token_dim)  # type: ignore[arg-type]  # prompt dimensions are filled in from the model config before this runs
            self.transform = nn.Sequential(
                nn.Linear(int(config.token_dim), hidden),  # type: ignore[arg-type]  # prompt dimensions are filled in from the model config before this runs
                nn.Tanh(),
                nn.Linear(hidden, self.output_width(config)),
            )
            if zero:
                nn.init.zeros_(self.transform[-1].weight)  # type: ignore[arg-type]  # the last layer is the nn.Linear built above
                nn.init.zeros_(self.transform[-1].bias)  # type: ignore[arg-type]  # the last layer is the nn.Linear built above
        elif zero:
            nn.init.zeros_(self.embedding.weight)

    @classmethod
    def num_tokens(cls, config: PrefixTuningConfig) -> int:  # type: ignore[override]  # each encoder takes its own method's config (subclass of the base's)
        """``n``: one prefix serves the decoder (or the decoder-only model), whatever the submodule count."""
        return int(config.num_virtual_tokens)  # type: ignore[arg-type]  # prompt dimensions are filled in from the model config before this runs

    @classmethod
    def output_width(cls, config: PrefixTuningConfig) -> int:  # type: ignore[override]  # each encoder takes its own method's config (subclass of the base's)
        """Width of one virtual token's output: ``2 * num_layers * token_dim`` (keys and values)."""
        return 2 * int(config.num_layers) * int(config.token_dim)  # type: ignore[arg-type]  # prompt dimensions are filled in from the model config before this runs

    @classmethod
    def input_width(cls, config: PrefixTuningConfig) -> int:  # type: ignore[override]  # each encoder takes its own method's config (subclass of the base's)
        """Width of the embedding table: ``token_dim``."""
        return int(config.token_dim) if config.prefix_projection else cls.output_width(config)  # type: ignore[arg-type]  # prompt dimensions are filled in from the model config before this runs

    @classmethod
    def output_is_parameter(cls, config: PrefixTuningConfig) -> bool:  # type: ignore[override]  # each encoder takes its own method's config (subclass of the base's)
        """``True`` without the projection: the prefixes are the parameters themselves."""
        return not config.prefix_projection

    def encode(self, embeds: torch.Tensor) -> torch.Tensor:
        """The prefixes ``(T, 2 * num_layers * token_dim)``, through the projection when there is one."""
        return self.transform(embeds) if self.prefix_projection else embeds
