"""``MontecloraConfig``: the settings of MonteCLoRA (Sengupta et al., 2024, "Robust and Efficient Fine-tuning of
LLMs with Bayesian Reparameterization of Low-Rank Adaptation", arXiv:2411.04358), given to
``LoraConfig(monteclora_config=...)``; the variant is in :mod:`peftkit.methods.lora.variants.monteclora`."""

from __future__ import annotations

import math
from dataclasses import dataclass

from peftkit.errors import ConfigError


@dataclass
class MontecloraConfig:
    """How MonteCLoRA perturbs ``A`` in training, and the weights of its variational loss (PEFT's fields and defaults).

    Attributes:
        num_samples: Monte Carlo samples (mixture components) per forward, ``N >= 1``.
        use_entropy: Add ``sum(w ** 2)`` of the mixture weights ``w`` to the variational loss.
        dirichlet_prior: Concentration of the Dirichlet prior over the mixture weights, ``> 0``.
        sample_scaler: Scale of the sampled perturbations of ``A`` (``0`` makes training plain LoRA).
        kl_loss_weight: Weight of the KL terms in the variational loss.
        buffer_size: PEFT pre-draws this many samples; peftkit draws each forward's samples when needed, so this
            only has to be positive (kept for the file format).

    Raises:
        ConfigError: ``num_samples``, ``dirichlet_prior`` or ``buffer_size`` not positive, a non-finite number.
    """

    num_samples: int = 8
    use_entropy: bool = False
    dirichlet_prior: float = 0.1
    sample_scaler: float = 1e-4
    kl_loss_weight: float = 1e-5
    buffer_size: int = 150

    def __post_init__(self) -> None:
        for name in ("num_samples", "buffer_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"MontecloraConfig.{name} must be a positive integer, got {value!r}.")
        for name in ("dirichlet_prior", "sample_scaler", "kl_loss_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"MontecloraConfig.{name} must be a finite number, got {value!r}.")
        if self.dirichlet_prior <= 0:
            raise ConfigError(f"MontecloraConfig.dirichlet_prior must be greater than 0, got {self.dirichlet_prior!r}.")
