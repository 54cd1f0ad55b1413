"""The P-tuning encoder: trainable token vectors reparameterised by an MLP or a bidirectional LSTM."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from peftkit.methods.p_tuning.config import PromptEncoderConfig, PromptEncoderReparameterizationType
from peftkit.methods.prompt.encoder import PromptEncoderBase

_MLP_LAYERS = 2


class PromptEncoder(PromptEncoderBase):
    """P-tuning's encoder, with ``E = embedding.weight`` ``(T, d)``, ``d = token_dim``, ``h`` the hidden size:

    * ``MLP``: ``prompts = W3 relu(W2 relu(W1 E))`` (``d -> h -> h -> d``, with biases);
    * ``LSTM``: ``prompts = W2 relu(W1 BiLSTM(E))`` (LSTM of ``encoder_num_layers`` layers and width ``h``
      per direction, then ``2h -> 2h -> d``). The LSTM reads all ``T`` tokens as one sequence.

    Only the prompts are saved; a loaded adapter is the table form (no head).

    Args:
        config: The P-tuning config, with model dimensions filled in.
        word_embeddings: Unused (P-tuning starts from random vectors).
        init_weights: Unused (the head's default initialisation is the initialisation).

    Input ``(batch, T)`` ids -> output ``(batch, T, d)``.
    """

    def __init__(
        self, config: PromptEncoderConfig, word_embeddings: nn.Module | None = None, init_weights: bool = True
    ) -> None:
        super().__init__(config, table=config.inference_mode)
        self.encoder_type = PromptEncoderReparameterizationType(config.encoder_reparameterization_type)
        if self.table:
            return
        dim = int(config.token_dim)  # type: ignore[arg-type]  # prompt dimensions are filled in from the model config before this runs
        hidden = int(config.encoder_hidden_size or dim)
        if self.encoder_type == PromptEncoderReparameterizationType.LSTM:
            self.lstm_head = nn.LSTM(
                input_size=dim,
                hidden_size=hidden,
                num_layers=config.encoder_num_layers,
                dropout=config.encoder_dropout,
                bidirectional=True,
                batch_first=True,
            )
            self.mlp_head = nn.Sequential(nn.Linear(2 * hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, dim))
            return
        if config.encoder_num_layers != _MLP_LAYERS:
            warnings.warn(
                f"encoder_num_layers={config.encoder_num_layers} is ignored by the MLP encoder, which always has "
                f"{_MLP_LAYERS} hidden layers.",
                stacklevel=2,
            )
        self.mlp_head = nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, dim)
        )

    def encode(self, embeds: torch.Tensor) -> torch.Tensor:
        """Re-parameterise the virtual-token embeddings ``(T, d)`` through the MLP or LSTM head."""
        if self.encoder_type == PromptEncoderReparameterizationType.LSTM:
            embeds = self.lstm_head(embeds)[0]
        return self.mlp_head(embeds)
