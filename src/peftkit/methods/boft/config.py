"""BOFT configuration (Liu et al., 2024, "Parameter-Efficient Orthogonal Finetuning via Butterfly
Factorization", arXiv:2311.06243).

BOFT multiplies each adapted weight by a product of ``m`` butterfly factors, each a permuted block-diagonal
orthogonal matrix, and scales its output rows. Field names and defaults are PEFT 0.21.2's.
"""

from __future__ import annotations

from dataclasses import dataclass

from peftkit.config import PeftConfig
from peftkit.config_checks import check_size, name_set
from peftkit.methods.oft.config import check_block_split, check_layer_method_fields
from peftkit.types import PeftType


@dataclass
class BOFTConfig(PeftConfig):
    """Configuration of a BOFT adapter: ``y = s * (W M^T x) + b`` with ``M = B_m ... B_1`` orthogonal.

    Each factor ``B_i = P_i diag(R_i1, ..., R_iD) P_i^T`` (``P_i`` a butterfly permutation, ``P_1 = I``), each
    block the Cayley transform of the skew part of a stored ``(b, b)`` matrix (``boft_R``,
    ``(m, D, b, b)``); ``s`` (``boft_s``) scales the output rows. Zero blocks and ``s = 1`` (the default
    initialisation) are the identity.

    Attributes:
        boft_block_size: Block size ``b``; must divide each adapted layer's input width (``in_features``, or
            ``in_channels * k * k`` for a ``k x k`` Conv2d). Set either this or ``boft_block_num``.
        boft_block_num: Blocks per factor ``D`` (``b * D`` = the width); the other field is then 0.
        boft_n_butterfly_factor: Number of factors ``m``; 1 is OFT. With ``m > 1`` the width must be a multiple of
            ``b * 2^(m-1)`` and ``b``, ``D`` even. (PEFT computes ``m > 1`` only with its CUDA extension and
            silently uses ``m = 1`` without it; peftkit computes every ``m`` in plain torch.)
        target_modules: Module names to adapt (list, regex or ``"all-linear"``); ``None``: architecture default.
        exclude_modules: Names (or a regex) never adapted.
        boft_dropout: Fraction of the blocks of one random factor replaced by the identity in each training forward.
        fan_in_fan_out: Weight stored ``(in, out)``; cleared for ``nn.Linear``.
        bias: Which biases train and are saved: ``"none"``, ``"all"`` or ``"boft_only"``.
        modules_to_save: Modules trained in full and saved with the adapter.
        init_weights: ``True``: identity; ``False``: blocks ``~ N(0, 0.1^2)``, ``s ~ N(1, 0.1^2)`` (for tests).
        layers_to_transform: Only adapt layers with these indices.
        layers_pattern: Name of the layer list used with ``layers_to_transform``.
    """

    boft_block_size: int = 4
    boft_block_num: int = 0
    boft_n_butterfly_factor: int = 1
    target_modules: set[str] | list[str] | str | None = None
    exclude_modules: set[str] | list[str] | str | None = None
    boft_dropout: float = 0.0
    fan_in_fan_out: bool = False
    bias: str = "none"
    modules_to_save: list[str] | None = None
    init_weights: bool = True
    layers_to_transform: list[int] | int | None = None
    layers_pattern: list[str] | str | None = None

    def __post_init__(self) -> None:
        self.peft_type = PeftType("BOFT")
        self.target_modules = name_set(self.target_modules)
        self.exclude_modules = name_set(self.exclude_modules)
        super().__post_init__()
        check_block_split("BOFTConfig", "boft_block_size", self.boft_block_size, "boft_block_num", self.boft_block_num)
        check_size("BOFTConfig", "boft_n_butterfly_factor", self.boft_n_butterfly_factor)
        check_layer_method_fields(self, "boft_dropout", ("none", "all", "boft_only"))
