"""Trainable-tokens configuration: train the embedding rows of a few tokens (e.g. new special tokens) and
nothing else. The field names and defaults are PEFT's, so ``adapter_config.json`` files move between peftkit and
PEFT unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from peftkit.config import PeftConfig
from peftkit.config_checks import check_regex, name_set
from peftkit.errors import ConfigError
from peftkit.types import PeftType


def check_token_indices(owner: str, indices: Any, allow_empty: bool = False) -> list[int]:
    """``indices`` as a list of distinct non-negative integers (``allow_empty``: possibly none yet).

    Raises:
        ConfigError: not a non-empty list of distinct non-negative integers (naming ``owner``).
    """
    ok = isinstance(indices, Sequence) and not isinstance(indices, str) and (allow_empty or len(indices) > 0)
    ok = ok and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indices)
    if not ok:
        raise ConfigError(f"{owner} must be a non-empty list of token ids (integers >= 0), got {indices!r}.")
    if len(set(indices)) != len(indices):
        raise ConfigError(f"{owner} lists a token id twice ({list(indices)}); list each token once.")
    return list(indices)


@dataclass
class TrainableTokensConfig(PeftConfig):
    """Configuration of a trainable-tokens adapter: rows ``token_indices`` of the target embedding table ``E``
    ``(V, d)`` are replaced by trained rows ``T (n, d)``; every other row stays frozen.

    Attributes:
        token_indices: The token ids whose rows train (distinct, each ``< V``).
        target_modules: The embedding module(s) to adapt (names or a regex); ``None`` uses the model's input
            embedding (``get_input_embeddings()``), else ``embed_tokens``. With tied word embeddings the output head
            follows the input embedding (one table, the same trained rows).
        init_weights: ``True`` starts ``T`` as a copy of the original rows (the adapter is the identity);
            ``False`` starts it random (for tests).
    """

    token_indices: list[int] = field(default_factory=list)
    target_modules: set[str] | list[str] | str | None = None
    init_weights: bool = True

    #: PEFT's rule: an adapter that trains token rows never saves whole embedding tables for targeting them.
    trains_token_rows: ClassVar[bool] = True

    def __post_init__(self) -> None:
        self.peft_type = PeftType("TRAINABLE_TOKENS")
        self.target_modules = name_set(self.target_modules)
        super().__post_init__()
        # empty is a valid config (PEFT's default; fields may be filled in later), refused when injected
        check_token_indices("TrainableTokensConfig.token_indices", self.token_indices, allow_empty=True)
        check_regex("TrainableTokensConfig", "target_modules", self.target_modules)
