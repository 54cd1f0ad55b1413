"""OFT configuration (Qiu et al., 2023, "Controlling Text-to-Image Diffusion by Orthogonal Finetuning",
arXiv:2306.07280).

OFT multiplies each adapted weight by a learned block-diagonal orthogonal matrix, so the angles between
neurons are kept. Field names and defaults are PEFT 0.21.2's, so ``adapter_config.json`` files move between
peftkit and PEFT unchanged. The checks shared with BOFT live here too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from peftkit.config import PeftConfig
from peftkit.config_checks import check_regex, check_size, name_set
from peftkit.errors import ConfigError
from peftkit.types import PeftType


def check_block_split(owner: str, size_field: str, size: int, count_field: str, count: int) -> None:
    """Exactly one of a block size and a block count is set (their product is the layer width).

    Raises:
        ConfigError: both or neither is non-zero, or one is negative / too large.
    """
    for name, value in ((size_field, size), (count_field, count)):
        check_size(owner, name, value, minimum=0)
    if (size == 0) == (count == 0):
        raise ConfigError(
            f"{owner}: set exactly one of {size_field} and {count_field} (their product is the layer width), "
            f"got {size_field}={size} and {count_field}={count}; set the other one to 0."
        )


def check_layer_method_fields(config: Any, dropout_field: str, bias_modes: tuple[str, ...]) -> None:
    """Checks OFT and BOFT share: target regexes, a dropout probability in ``[0, 1)``, the bias mode and
    ``layers_pattern`` only with ``layers_to_transform``.

    Raises:
        ConfigError: naming the field and what to set instead.
    """
    owner = type(config).__name__
    for name in ("target_modules", "exclude_modules"):
        check_regex(owner, name, getattr(config, name))
    dropout = getattr(config, dropout_field)
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0.0 <= dropout < 1.0:
        raise ConfigError(f"{owner}.{dropout_field} must be a probability in [0, 1), got {dropout!r}.")
    if config.bias not in bias_modes:
        raise ConfigError(f"{owner}.bias must be one of {', '.join(map(repr, bias_modes))}, got {config.bias!r}.")
    if config.layers_pattern and config.layers_to_transform is None:
        raise ConfigError(f"{owner}: layers_pattern is only used together with layers_to_transform; set both.")
    if isinstance(config.target_modules, str) and config.layers_to_transform is not None:
        raise ConfigError(f"{owner}: layers_to_transform cannot be used when target_modules is a regex string.")


@dataclass
class OFTConfig(PeftConfig):
    """Configuration of an OFT adapter: ``y = W R^T x + b`` with ``R = diag(R_1, ..., R_r)`` orthogonal.

    Each block ``R_k (b, b)`` is the Cayley transform of a skew-symmetric ``S_k``, stored as its strict upper
    triangle (``oft_R``, ``(r, b (b - 1) / 2)``); ``S = 0`` (the default initialisation) is the identity.

    Attributes:
        r: Number of blocks per layer (``r * oft_block_size`` = the layer's input width); set either ``r`` or
            ``oft_block_size``, the other one to 0.
        oft_block_size: Block size ``b``; must divide each adapted layer's input width (``in_features``,
            ``embedding_dim`` for an Embedding, or ``in_channels * k * k`` for a ``k x k`` Conv2d).
        module_dropout: Probability-like fraction of blocks replaced by the identity in each training forward.
        target_modules: Module names to adapt (list, regex or ``"all-linear"``); ``None``: architecture default.
        fan_in_fan_out: Weight stored ``(in, out)``; cleared for ``nn.Linear`` (OFT has no Conv1D layer).
        bias: Which biases train and are saved: ``"none"``, ``"all"`` or ``"oft_only"``.
        exclude_modules: Names (or a regex) never adapted.
        init_weights: ``True``: ``S = 0`` (identity); ``False``: ``S ~ N(0, 0.1^2)`` (for tests).
        layers_to_transform: Only adapt layers with these indices.
        layers_pattern: Name of the layer list used with ``layers_to_transform``.
        modules_to_save: Modules trained in full and saved with the adapter.
        coft: Constrained OFT: before each use, each ``S_k`` is projected onto ``||S_k||_F <= eps / sqrt(rows)``.
        eps: COFT's radius.
        block_share: One block shared by all ``r`` positions (``oft_R`` has one row).
        use_cayley_neumann: Replace the exact Cayley transform by its truncated Neumann series (no inverse).
        num_cayley_neumann_terms: Terms of that series (at least 2).
    """

    r: int = 0
    oft_block_size: int = 32
    module_dropout: float = 0.0
    target_modules: set[str] | list[str] | str | None = None
    fan_in_fan_out: bool = False
    bias: Literal["none", "all", "oft_only"] = "none"
    exclude_modules: set[str] | list[str] | str | None = None
    init_weights: bool = True
    layers_to_transform: list[int] | int | None = None
    layers_pattern: list[str] | str | None = None
    modules_to_save: list[str] | None = None
    coft: bool = False
    eps: float = 6e-5
    block_share: bool = False
    use_cayley_neumann: bool = True
    num_cayley_neumann_terms: int = 5

    def __post_init__(self) -> None:
        self.peft_type = PeftType("OFT")
        self.target_modules = name_set(self.target_modules)
        self.exclude_modules = name_set(self.exclude_modules)
        super().__post_init__()
        check_block_split("OFTConfig", "oft_block_size", self.oft_block_size, "r", self.r)
        check_layer_method_fields(self, "module_dropout", ("none", "all", "oft_only"))
        if not math.isfinite(self.eps) or self.eps <= 0:
            raise ConfigError(f"OFTConfig.eps (COFT's radius) must be a positive finite number, got {self.eps!r}.")
        if self.num_cayley_neumann_terms < 2:
            raise ConfigError(
                f"OFTConfig.num_cayley_neumann_terms={self.num_cayley_neumann_terms} keeps every rotation the "
                "identity (the adapter could never change the output); use 2 or more (default 5)."
            )
