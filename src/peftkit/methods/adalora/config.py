"""AdaLoRA configuration (Zhang et al., 2023, "Adaptive Budget Allocation for Parameter-Efficient
Fine-Tuning", arXiv:2303.10512).

AdaLoRA extends LoRA's config (PEFT's ``AdaLoraConfig`` subclasses ``LoraConfig``, so the JSON carries every
LoRA field too) with the rank-allocation schedule. Training has three phases over ``total_step`` steps:

* ``step <= tinit``: warm-up, every layer keeps ``init_r`` ranks;
* ``tinit < step < total_step - tfinal``: the total budget falls along a cubic curve from
  ``init_r * n_layers`` to ``target_r * n_layers``, masking the least important singular triplets every
  ``deltaT`` steps;
* from ``total_step - tfinal`` on: the final allocation is frozen (``rank_pattern``) and fine-tuned.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar

from peftkit.config_checks import check_size
from peftkit.errors import ConfigError, UnsupportedError
from peftkit.methods.lora.config import LoraConfig
from peftkit.types import PeftType


@dataclass
class AdaLoraConfig(LoraConfig):
    """Configuration of an AdaLoRA adapter: ``y = W x + B (A * E) x * s / (ranknum + 1e-5)``.

    Attributes:
        target_r: Average rank per layer once the budget has been allocated (``<= init_r``).
        init_r: Rank of every layer at the start (rows of ``A``, ``E``; columns of ``B``).
        tinit: Warm-up steps before ranks are pruned.
        tfinal: Final steps with the allocation frozen.
        deltaT: Interval (in steps) between two maskings during the budget phase.
        beta1: EMA factor of the sensitivity ``|p * grad|``, in ``(0, 1)``.
        beta2: EMA factor of its uncertainty ``|sensitivity - EMA|``, in ``(0, 1)``.
        orth_reg_weight: Weight of the orthogonality penalty ``||A A^T - I||_F`` / ``||B^T B - I||_F`` added
            to the training loss (``>= 0``).
        total_step: Total number of training steps (required, ``> tinit + tfinal``).
        rank_pattern: The allocation, filled in by training: ``{"<module>.lora_E": [keep, ...]}`` with one
            boolean per initial rank (module names relative to the base model). A saved adapter keeps only
            the ranks marked ``True``; loading resizes each layer to them.
        r: Unused by AdaLoRA (``init_r`` sets the rank); kept for PEFT's JSON format.
    """

    target_r: int = 8
    init_r: int = 12
    tinit: int = 0
    tfinal: int = 0
    deltaT: int = 1  # PEFT's field name
    beta1: float = 0.85
    beta2: float = 0.85
    orth_reg_weight: float = 0.5
    total_step: int | None = None
    rank_pattern: dict | None = None  # type: ignore[assignment]  # AdaLoRA fills it during training; None until then (PEFT's default)

    zero_alpha_disables: ClassVar[bool] = False  # lora_alpha <= 0 scales by the rank
    # LoRA's trainable_token_indices, variants and data-driven initialisations are not wired into AdaLoRA's injection
    # (its SVD-form layers initialise themselves): refused rather than ignored.
    unsupported_fields: ClassVar[tuple[str, ...]] = (
        *LoraConfig.unsupported_fields, "trainable_token_indices", "corda_config", "eva_config", "loftq_config",
        "velora_config", "use_bdlora", "kasa_config", "monteclora_config", "arrow_config", "lora_ga_config",
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.init_lora_weights in ("corda", "eva", "loftq"):
            raise ConfigError(
                f"AdaLoraConfig: init_lora_weights={self.init_lora_weights!r} is a LoRA initialisation that AdaLoRA "
                "does not support (as in PEFT); use True or False."
            )
        super().__post_init__()
        self.peft_type = PeftType("ADALORA")
        self._validate_schedule()

    def _validate_rank_pattern(self) -> None:
        if self.rank_pattern is None:
            return
        if not isinstance(self.rank_pattern, dict):
            raise ConfigError(f"AdaLoraConfig.rank_pattern must be None or a dict, got {type(self.rank_pattern)}.")
        for key, mask in self.rank_pattern.items():
            if not isinstance(mask, (list, tuple)) or not all(isinstance(v, (bool, int)) for v in mask):
                raise ConfigError(
                    f"AdaLoraConfig.rank_pattern[{key!r}] must be a list of booleans (one per initial rank), "
                    f"got {mask!r}."
                )

    def _validate_init(self) -> None:
        if not isinstance(self.init_lora_weights, bool):
            raise UnsupportedError(
                f"AdaLoRA initialises its singular triplets itself; init_lora_weights must be True or False, "
                f"got {self.init_lora_weights!r}."
            )

    def _validate_schedule(self) -> None:
        if self.use_dora:
            raise ConfigError("AdaLoRA does not support DoRA; set use_dora=False.")
        for name in ("init_r", "target_r", "tinit", "tfinal", "deltaT"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "deltaT" else 0):
                raise ConfigError(f"AdaLoraConfig.{name} must be a non-negative integer (deltaT >= 1), got {value!r}.")
        if self.init_r == 0:
            raise ConfigError("AdaLoraConfig.init_r must be positive.")
        check_size("AdaLoraConfig", "init_r", self.init_r)
        check_size("AdaLoraConfig", "target_r", self.target_r, minimum=0)
        if self.target_r > self.init_r and not self.inference_mode:  # saved adapters load as they are
            raise ConfigError(
                f"AdaLoraConfig.target_r={self.target_r} exceeds init_r={self.init_r}: the budget can only shrink. "
                "Lower target_r or raise init_r."
            )
        if not isinstance(self.total_step, int) or isinstance(self.total_step, bool) or self.total_step <= 0:
            raise ConfigError(
                f"AdaLoRA needs total_step, the number of training steps, as a positive integer (got "
                f"{self.total_step!r}); the rank budget schedule is laid out over it."
            )
        if self.tinit >= self.total_step - self.tfinal:
            raise ConfigError(
                f"AdaLoRA's schedule leaves no budgeting phase: tinit={self.tinit} >= total_step - tfinal = "
                f"{self.total_step - self.tfinal}. Decrease tinit or tfinal, or increase total_step."
            )
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
                raise ConfigError(f"AdaLoraConfig.{name} must lie strictly between 0 and 1, got {value!r}.")
        if not isinstance(self.orth_reg_weight, (int, float)) or self.orth_reg_weight < 0:
            raise ConfigError(f"AdaLoraConfig.orth_reg_weight must be >= 0, got {self.orth_reg_weight!r}.")
        if self.r != 8:
            warnings.warn(
                "AdaLoraConfig.r is not used by AdaLoRA and is ignored; set init_r for the initial rank.",
                stacklevel=3,
            )
