"""P-tuning configuration (Liu et al., 2021, "GPT Understands, Too").

Field names and defaults are PEFT's, so ``adapter_config.json`` files move between peftkit and PEFT unchanged.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from peftkit.config import PromptLearningConfig
from peftkit.errors import ConfigError
from peftkit.types import PeftType


class PromptEncoderReparameterizationType(str, enum.Enum):
    """The network that turns the virtual token vectors into prompts."""

    MLP = "MLP"
    LSTM = "LSTM"


@dataclass
class PromptEncoderConfig(PromptLearningConfig):
    """Configuration of P-tuning: prompts ``= head(E)`` for trainable vectors ``E`` ``(T, token_dim)``.

    Attributes:
        encoder_reparameterization_type: ``MLP`` (three linear layers with ReLU) or ``LSTM`` (a bidirectional
            LSTM followed by a two-layer MLP).
        encoder_hidden_size: Hidden width of the head (defaults to ``token_dim``).
        encoder_num_layers: LSTM layers (the MLP always has exactly two hidden layers).
        encoder_dropout: Dropout between LSTM layers, in ``[0, 1)``.
    """

    encoder_reparameterization_type: PromptEncoderReparameterizationType | str = PromptEncoderReparameterizationType.MLP
    encoder_hidden_size: int | None = None
    encoder_num_layers: int = 2
    encoder_dropout: float = 0.0

    def __post_init__(self) -> None:
        self.peft_type = PeftType("P_TUNING")
        super().__post_init__()
        try:
            kind = PromptEncoderReparameterizationType(self.encoder_reparameterization_type)
        except ValueError:
            raise ConfigError(
                f"encoder_reparameterization_type={self.encoder_reparameterization_type!r} is not 'MLP' or 'LSTM'."
            ) from None
        self.encoder_reparameterization_type = kind
        for name in ("encoder_hidden_size", "encoder_num_layers"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ConfigError(f"PromptEncoderConfig.{name} must be a positive integer, got {value!r}.")
        if not isinstance(self.encoder_dropout, (int, float)) or not 0.0 <= self.encoder_dropout < 1.0:
            raise ConfigError(f"PromptEncoderConfig.encoder_dropout must be in [0, 1), got {self.encoder_dropout!r}.")
