"""The per-layer facts of a LoRA adapter, derived from a :class:`~peftkit.methods.lora.config.LoraConfig` and the
module's name by :func:`~peftkit.methods.lora.method.lora_layer_facts`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from peftkit.methods.lora.scaling import lora_scaling
from peftkit.methods.lora.variant import LoraVariant


@dataclass(frozen=True)
class LoraLayerSpec:
    """Per-layer facts derived from a :class:`LoraConfig` and the module name (the config is never mutated)."""

    r: int
    alpha: float
    dropout: float = 0.0
    init: bool | str = True
    use_rslora: bool = False
    use_dora: bool = False
    fan_in_fan_out: bool = False
    lora_bias: bool = False
    variant: LoraVariant | None = None  # a LoRA variant's behaviour (variant.py); None: plain LoRA
    #: the sub-config of the named initialisation ``init``: LoRA-GA's LoraGAConfig, LoftQ's loftq_config dict
    init_options: Any = None

    @property
    def scaling(self) -> float:
        """``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA)."""
        return lora_scaling(self.alpha, self.r, self.use_rslora)
