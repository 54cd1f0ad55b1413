"""VeRA configuration (Kopiczko et al., 2024, "VeRA: Vector-based Random Matrix Adaptation", arXiv:2310.11454).

The field names and defaults are PEFT's, so that ``adapter_config.json`` files move between peftkit and PEFT
unchanged.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

from peftkit.config import PeftConfig
from peftkit.config_checks import check_regex, check_size, name_set
from peftkit.errors import ConfigError
from peftkit.types import PeftType


@dataclass
class VeraConfig(PeftConfig):
    """Configuration of a VeRA adapter: ``y = W x + lambda_b * (B (lambda_d * (A x)))``.

    ``A (r, max_in)`` and ``B (max_out, r)`` are frozen random matrices held once per model (each layer uses the
    top-left block that fits it); only the vectors ``lambda_d (r,)`` and ``lambda_b (out,)`` of each layer train.

    Attributes:
        r: Rank of the shared projections (VeRA uses larger ranks than LoRA: its cost does not grow with ``r``).
        target_modules: Module names to adapt (Linear / GPT-2 ``Conv1D``): a list of names (matching a module
            whose full name equals a name or ends with ``.name``), a regex string, or ``"all-linear"``.
        projection_prng_key: Seed of the generator that draws ``A`` then ``B`` (Kaiming-uniform, on the CPU).
        save_projection: Save ``A`` and ``B`` with the adapter (``base_model.vera_A`` / ``base_model.vera_B``);
            ``False`` re-draws them from ``projection_prng_key`` when loading.
        vera_dropout: Dropout probability on the adapter input, in ``[0, 1)``.
        d_initial: Initial value of every ``lambda_d`` entry (``lambda_b`` starts at zero).
        fan_in_fan_out: ``True`` when the base weight is stored ``(in, out)``; set automatically for ``Conv1D``.
        bias: Which biases train and are saved: ``"none"``, ``"all"`` or ``"vera_only"`` (the adapted layers').
        modules_to_save: Modules trained in full and saved with the adapter (e.g. a classifier head).
        init_weights: ``True``: ``lambda_d = d_initial``, ``lambda_b = 0`` (the adapter starts as the identity);
            ``False``: ``lambda_d ~ N(0, 1)``, ``lambda_b = 1`` (for tests).
        layers_to_transform: Only adapt layers with these indices.
        layers_pattern: Name of the layer list used with ``layers_to_transform``.
    """

    r: int = 256
    target_modules: set[str] | list[str] | str | None = None
    projection_prng_key: int = 0
    save_projection: bool = True
    vera_dropout: float = 0.0
    d_initial: float = 0.1
    fan_in_fan_out: bool = False
    bias: str = "none"
    modules_to_save: list[str] | None = None
    init_weights: bool = True
    layers_to_transform: list[int] | int | None = None
    layers_pattern: list[str] | str | None = None

    def __post_init__(self) -> None:
        self.peft_type = PeftType("VERA")
        self.target_modules = name_set(self.target_modules)
        super().__post_init__()
        self._validate()
        if not self.save_projection:
            warnings.warn(
                "VeraConfig(save_projection=False): vera_A / vera_B are not saved and will be re-drawn from "
                "projection_prng_key when loading; save them (the default) to be independent of the PRNG.",
                stacklevel=3,
            )

    def _validate(self) -> None:
        check_size("VeraConfig", "r", self.r)
        check_regex("VeraConfig", "target_modules", self.target_modules)
        if isinstance(self.projection_prng_key, bool) or not isinstance(self.projection_prng_key, int):
            raise ConfigError(f"VeraConfig.projection_prng_key must be an integer, got {self.projection_prng_key!r}.")
        if not isinstance(self.vera_dropout, (int, float)) or not 0.0 <= self.vera_dropout < 1.0:
            raise ConfigError(f"VeraConfig.vera_dropout must be in [0, 1), got {self.vera_dropout!r}.")
        if not math.isfinite(self.d_initial):
            raise ConfigError(f"VeraConfig.d_initial must be a finite number, got {self.d_initial!r}.")
        if self.bias not in ("none", "all", "vera_only"):
            raise ConfigError(f"VeraConfig.bias must be 'none', 'all' or 'vera_only', got {self.bias!r}.")
        if isinstance(self.target_modules, str) and self.layers_to_transform is not None:
            raise ConfigError("layers_to_transform cannot be used when target_modules is a regex string.")
        if self.layers_pattern and self.layers_to_transform is None:
            raise ConfigError("layers_pattern is only used together with layers_to_transform; set both.")
