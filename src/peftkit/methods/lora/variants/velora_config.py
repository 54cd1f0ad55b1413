"""VeLoRA's settings (``LoraConfig(velora_config=VeloraConfig(...))``), with PEFT's field names and defaults.

Miles et al., 2024, "VeLoRA: Memory Efficient Training using Rank-1 Sub-Token Projections" (arXiv:2405.17991).
The nested config is written into ``adapter_config.json`` as an object ``{"init_type", "num_groups", "scale"}``
and read back into this class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from peftkit.errors import ConfigError

#: How the projection vector is chosen (see :class:`VeloraConfig`).
VELORA_INIT_TYPES = ("batch_average", "batch_average_once", "random")


@dataclass
class VeloraConfig:
    """How VeLoRA compresses the input of each adapted layer's ``lora_A`` for the backward pass.

    The input ``x (tokens, in)`` is cut into ``num_groups`` sub-tokens of ``D = ceil(in / num_groups)`` features
    (zero-padded), and each sub-token is stored as one number, its projection on a unit vector ``v (D,)``; the
    backward pass rebuilds ``x_hat = scale * (x . v) v`` per sub-token for ``lora_A``'s gradient.

    Attributes:
        num_groups: Sub-tokens per token (a positive integer): more groups store more numbers per token and
            rebuild the input more closely.
        scale: Positive factor on the rebuilt input in the backward pass.
        init_type: How ``v`` is chosen: ``"batch_average"`` (the normalised mean sub-token of each training batch,
            renewed at every training forward), ``"batch_average_once"`` (of the first training batch only) or
            ``"random"`` (a fixed random unit vector drawn when the adapter is created).

    Raises:
        ConfigError: a value outside the ranges above.
    """

    num_groups: int = 64
    scale: float = 1.0
    init_type: Literal["batch_average", "batch_average_once", "random"] = "batch_average"

    def __post_init__(self) -> None:
        if isinstance(self.num_groups, bool) or not isinstance(self.num_groups, int) or self.num_groups <= 0:
            raise ConfigError(f"VeloraConfig.num_groups must be a positive integer, got {self.num_groups!r}.")
        scale_is_number = isinstance(self.scale, (int, float)) and not isinstance(self.scale, bool)
        if not scale_is_number or not math.isfinite(self.scale) or self.scale <= 0:
            raise ConfigError(f"VeloraConfig.scale must be a positive finite number, got {self.scale!r}.")
        if self.init_type not in VELORA_INIT_TYPES:
            raise ConfigError(
                f"VeloraConfig.init_type={self.init_type!r} is not known; use one of {', '.join(VELORA_INIT_TYPES)}."
            )
