"""``KasaConfig``: the settings of KaSA, knowledge-aware singular-value adaptation (Wang et al., 2024,
arXiv:2412.06071), given to ``LoraConfig(kasa_config=...)``; the variant itself is in
:mod:`peftkit.methods.lora.variants.kasa`."""

from __future__ import annotations

import math
from dataclasses import dataclass

from peftkit.errors import ConfigError


@dataclass
class KasaConfig:
    """The two weights of KaSA's auxiliary training losses (paper Eq. 9-11), read by ``_get_kasa_loss``.

    Attributes:
        beta: Weight of the singular-value penalty ``sum(lora_diag ** 2)``; ``>= 0`` (PEFT's default ``1e-4``).
        gamma: Weight of the orthogonality penalty ``||B^T B - I||_F + ||A A^T - I||_F``; ``>= 0`` (``1e-3``).

    Raises:
        ConfigError: a negative or non-finite coefficient.
    """

    beta: float = 1e-4
    gamma: float = 1e-3

    def __post_init__(self) -> None:
        for name in ("beta", "gamma"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"KasaConfig.{name} must be a finite number, got {value!r}.")
            if value < 0:
                raise ConfigError(f"KasaConfig.{name} is a loss weight and must be non-negative, got {value!r}.")
