"""The shared base of the prompt encoders: virtual-token ids in, vectors out, and the saved form.

A prompt encoder maps the ids ``0 .. T-1`` of its virtual tokens to vectors. While it trains it may
reparameterise them (P-tuning's MLP or LSTM, prefix tuning's projection). PEFT saves only the *result* for all
``T`` tokens (``prompt_embeddings``, shape ``(T, output_width)``), so an adapter loaded for inference is a plain
table that holds that result: the *table form* of the encoder.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from peftkit.config import PromptLearningConfig


class PromptEncoderBase(nn.Module):
    """Base of :class:`PromptEmbedding`, :class:`PrefixEncoder` and :class:`PromptEncoder`.

    Subclasses say how wide the trainable token vectors are (:meth:`input_width`), how wide the output is
    (:meth:`output_width`), how many virtual tokens there are (:meth:`num_tokens`), build their
    reparameterisation in ``__init__`` when not in table form, and apply it in :meth:`encode`.

    Args:
        config: The method's config, with the model dimensions filled in.
        table: Build the table form: ``embedding`` holds the saved output, no reparameterisation.

    Attributes:
        embedding: ``nn.Embedding(T, input_width)`` (trainable form) or ``(T, output_width)`` (table form).
        table: Whether this encoder is in table form.
    """

    #: ``True`` when the output is each layer's key/value prefix (prefix tuning), not input embeddings.
    kv_prefix: ClassVar[bool] = False

    def __init__(self, config: PromptLearningConfig, table: bool) -> None:
        super().__init__()
        self.table = table
        width = self.output_width(config) if table else self.input_width(config)
        self.embedding = nn.Embedding(self.num_tokens(config), width)

    # -- shapes ----------------------------------------------------------------------------------------
    @classmethod
    def num_tokens(cls, config: PromptLearningConfig) -> int:
        """``T``: virtual tokens per submodule times the submodules that receive them."""
        return int(config.num_virtual_tokens) * int(config.num_transformer_submodules or 1)  # type: ignore[arg-type]  # prompt dimensions are filled in from the model config before this runs

    @classmethod
    def input_width(cls, config: PromptLearningConfig) -> int:
        """Width of the trainable token vectors (the model's hidden size by default)."""
        return int(config.token_dim)  # type: ignore[arg-type]  # prompt dimensions are filled in from the model config before this runs

    @classmethod
    def output_width(cls, config: PromptLearningConfig) -> int:
        """Width of the encoder's output, which is what ``prompt_embeddings`` stores."""
        return int(config.token_dim)  # type: ignore[arg-type]  # prompt dimensions are filled in from the model config before this runs

    @classmethod
    def output_is_parameter(cls, config: PromptLearningConfig) -> bool:
        """Whether the saved output *is* the trainable parameter, so a saved adapter can go on training."""
        return False

    # -- compute ---------------------------------------------------------------------------------------
    def encode(self, embeds: torch.Tensor) -> torch.Tensor:
        """The reparameterisation ``(batch, T, input_width) -> (batch, T, output_width)``; identity here."""
        return embeds

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        """``(batch, T)`` virtual-token ids -> ``(batch, T, output_width)`` vectors."""
        embeds = self.embedding(indices)
        return embeds if self.table else self.encode(embeds)

    def token_ids(self) -> torch.Tensor:
        """The ids ``0 .. T-1`` of every virtual token, on the encoder's device."""
        return torch.arange(self.embedding.num_embeddings, device=self.embedding.weight.device)

    def all_tokens(self) -> torch.Tensor:
        """The output for every virtual token, ``(T, output_width)``; computed once, not once per sample."""
        if self.table:
            return self.embedding.weight
        return self(self.token_ids().unsqueeze(0))[0]

    # -- saved form ------------------------------------------------------------------------------------
    def saved_output(self) -> torch.Tensor:
        """What PEFT saves as ``prompt_embeddings``: :meth:`all_tokens`, detached."""
        return self.all_tokens().detach()

    def load_output(self, saved: torch.Tensor) -> None:
        """Copy a saved ``prompt_embeddings`` tensor into ``embedding`` (table form, or an identity encoder)."""
        with torch.no_grad():
            self.embedding.weight.copy_(saved.to(self.embedding.weight.dtype))

    def extra_repr(self) -> str:
        """Virtual tokens and output width, for ``print(model)``."""
        return f"table={self.table}"
