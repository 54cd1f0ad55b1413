"""Prefix tuning configuration (Li & Liang, 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation").

Field names and defaults are PEFT's, so ``adapter_config.json`` files move between peftkit and PEFT unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from peftkit.config import PromptLearningConfig
from peftkit.errors import ConfigError
from peftkit.types import PeftType


@dataclass
class PrefixTuningConfig(PromptLearningConfig):
    """Configuration of prefix tuning: ``num_virtual_tokens`` keys and values prepended to every attention layer.

    Attributes:
        init_weights: ``None`` (random ``N(0, 1)`` prefix) or ``"zero"`` (the projection's last layer, or the
            prefix itself without projection, starts at zero).
        encoder_hidden_size: Hidden width of the projection MLP (defaults to ``token_dim``).
        prefix_projection: Reparameterise the prefix as ``MLP(E)`` with ``E`` ``(n, token_dim)``:
            ``Linear(token_dim, hidden) -> tanh -> Linear(hidden, 2 * num_layers * token_dim)``.
    """

    init_weights: Literal["zero"] | None = None
    encoder_hidden_size: int | None = None
    prefix_projection: bool = False

    def __post_init__(self) -> None:
        self.peft_type = PeftType("PREFIX_TUNING")
        super().__post_init__()
        if self.init_weights not in (None, "zero"):
            raise ConfigError(f"PrefixTuningConfig.init_weights must be None or 'zero', got {self.init_weights!r}.")
        size = self.encoder_hidden_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
            raise ConfigError(f"PrefixTuningConfig.encoder_hidden_size must be a positive integer, got {size!r}.")
