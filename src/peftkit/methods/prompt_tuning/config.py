"""Prompt tuning configuration (Lester et al., 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning").

Field names and defaults are PEFT's, so ``adapter_config.json`` files move between peftkit and PEFT unchanged.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from peftkit.config import PromptLearningConfig
from peftkit.errors import ConfigError
from peftkit.types import PeftType


class PromptTuningInit(str, enum.Enum):
    """How the virtual token embeddings start: from a text, from random vocabulary rows, or random vectors."""

    TEXT = "TEXT"
    SAMPLE_VOCAB = "SAMPLE_VOCAB"
    RANDOM = "RANDOM"


@dataclass
class PromptTuningConfig(PromptLearningConfig):
    """Configuration of prompt tuning: ``T = num_virtual_tokens * num_transformer_submodules`` trainable vectors
    of width ``token_dim`` prepended to the input embeddings.

    Attributes:
        prompt_tuning_init: ``RANDOM`` (``N(0, 1)`` vectors), ``SAMPLE_VOCAB`` (rows of the word embedding at
            random token ids) or ``TEXT`` (the word embeddings of ``prompt_tuning_init_text``, cut or repeated
            to ``T`` tokens).
        prompt_tuning_init_text: The text for ``TEXT`` initialisation.
        tokenizer_name_or_path: The tokenizer (a local directory or a hub id) for ``TEXT`` initialisation.
        tokenizer_kwargs: Extra ``AutoTokenizer.from_pretrained`` arguments (``trust_remote_code`` is dropped).
    """

    prompt_tuning_init: PromptTuningInit | str = PromptTuningInit.RANDOM
    prompt_tuning_init_text: str | None = None
    tokenizer_name_or_path: str | None = None
    tokenizer_kwargs: dict | None = None

    def __post_init__(self) -> None:
        self.peft_type = PeftType("PROMPT_TUNING")
        super().__post_init__()
        try:
            self.prompt_tuning_init = PromptTuningInit(self.prompt_tuning_init)
        except ValueError:
            options = ", ".join(i.value for i in PromptTuningInit)
            raise ConfigError(f"prompt_tuning_init={self.prompt_tuning_init!r} is not one of {options}.") from None
        is_text = self.prompt_tuning_init == PromptTuningInit.TEXT
        if is_text and not self.tokenizer_name_or_path:
            raise ConfigError("prompt_tuning_init='TEXT' needs tokenizer_name_or_path (a tokenizer directory or id).")
        if is_text and self.prompt_tuning_init_text is None:
            raise ConfigError("prompt_tuning_init='TEXT' needs prompt_tuning_init_text (the text to start from).")
        if self.tokenizer_kwargs and not is_text:
            raise ConfigError("tokenizer_kwargs is only used with prompt_tuning_init='TEXT'; remove it.")
