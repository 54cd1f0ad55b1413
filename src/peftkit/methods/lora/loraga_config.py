"""The options of the LoRA-GA initialisation (Wang et al., 2024, "LoRA-GA: Low-Rank Adaptation with Gradient
Approximation", arXiv:2407.05000): ``LoraConfig(init_lora_weights="lora_ga", lora_ga_config=LoraGAConfig(...))``.

Saved inside ``adapter_config.json`` as a nested object with PEFT's field names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from peftkit.errors import ConfigError

#: Which of the gradient's top ``2r`` singular directions go to ``A`` and which to ``B`` (see ``loraga_init``).
LORA_GA_DIRECTIONS = ("ArBr", "A2rBr", "ArB2r", "random")
#: How the factors are scaled after the split.
LORA_GA_SCALES = ("stable", "weight_svd", "gd_scale", "unit")


@dataclass
class LoraGAConfig:
    """How LoRA-GA turns the estimated full-weight gradient ``G (out, in)`` into ``A`` and ``B``.

    With ``G ~= U S V^T`` (top ``2r`` singular triplets, index ``0`` the largest):

    Attributes:
        direction: ``"ArB2r"`` (default: ``A = V[:, :r]^T``, ``B = U[:, r:2r] S[r:2r]``), ``"A2rBr"``
            (``A`` from ``r..2r-1``, ``B`` from ``0..r-1``), ``"ArBr"`` (``A`` from the odd indices, ``B`` from the
            even ones) or ``"random"`` (the same ``r`` random indices of ``0..2r-1`` for both).
        scale: ``"stable"`` (default: ``B *= n^(1/4) / sqrt(stable_gamma)``), ``"weight_svd"`` (``B`` rescaled so
            that its largest singular value is the base weight's, as ``svd_lowrank(q=r, niter=4)`` estimates it),
            ``"gd_scale"`` (both divided by the LoRA scaling) or ``"unit"`` (no rescaling).
        stable_gamma: ``gamma`` of the ``"stable"`` scale, a positive number (default 16).

    Raises:
        ConfigError: an unknown ``direction`` or ``scale``, or a ``stable_gamma`` that is not positive.
    """

    direction: Literal["ArBr", "A2rBr", "ArB2r", "random"] = "ArB2r"
    scale: Literal["stable", "weight_svd", "gd_scale", "unit"] = "stable"
    stable_gamma: int = 16

    def __post_init__(self) -> None:
        if self.direction not in LORA_GA_DIRECTIONS:
            raise ConfigError(
                f"LoraGAConfig.direction={self.direction!r} is not known; use one of {', '.join(LORA_GA_DIRECTIONS)}."
            )
        if self.scale not in LORA_GA_SCALES:
            raise ConfigError(
                f"LoraGAConfig.scale={self.scale!r} is not known; use one of {', '.join(LORA_GA_SCALES)}."
            )
        gamma = self.stable_gamma
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma > 0:
            raise ConfigError(f"LoraGAConfig.stable_gamma must be a positive number, got {gamma!r}.")
