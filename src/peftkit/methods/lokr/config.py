"""LoKr configuration (Yeh et al., 2023, "Navigating Text-To-Image Customization: From LyCORIS Fine-Tuning to
Model Evaluation", arXiv:2309.14859), with PEFT's field names and defaults."""

from __future__ import annotations

from dataclasses import dataclass

from peftkit.errors import ConfigError
from peftkit.methods.lycoris.config import LycorisConfig
from peftkit.types import PeftType


@dataclass
class LoKrConfig(LycorisConfig):
    """Configuration of a LoKr adapter: ``delta W = (alpha / r) * kron(W1, W2)``.

    Each dimension is split in two factors (``out = a * b``, ``in = c * d``, see
    :func:`~peftkit.methods.lokr.layer.factorization`); ``W1`` is ``(a, c)`` and ``W2`` is ``(b, d)`` (times the
    kernel for a convolution). ``W2`` is stored as ``lokr_w2_a @ lokr_w2_b`` (rank ``r``) when
    ``r < max(b, d) / 2``, else in full as ``lokr_w2``; ``W1`` likewise (``lokr_w1_a @ lokr_w1_b``) only with
    ``decompose_both``. See :class:`~peftkit.methods.lycoris.config.LycorisConfig` for the shared fields.

    Attributes:
        decompose_both: Also factor ``W1`` at rank ``r`` when ``r < max(a, c) / 2``.
        decompose_factor: Preferred first factor of each dimension; ``-1`` picks the divisor pair nearest the
            square root.
        rank_dropout_scale: Divide the rank-dropout mask by its mean while training.
        init_weights: ``True`` starts ``W1`` at zero (``delta W = 0``); ``"lycoris"`` starts ``W2`` (its
            ``lokr_w2_b``) at zero instead, as the LyCORIS repository does; ``False`` starts all factors random.
    """

    decompose_both: bool = False
    decompose_factor: int = -1
    rank_dropout_scale: bool = False

    def __post_init__(self) -> None:
        self.peft_type = PeftType("LOKR")
        super().__post_init__()
        if not isinstance(self.init_weights, bool) and self.init_weights != "lycoris":
            raise ConfigError(f"LoKrConfig.init_weights must be True, False or 'lycoris', got {self.init_weights!r}.")
        if self.decompose_factor != -1 and self.decompose_factor < 1:
            raise ConfigError(
                f"LoKrConfig.decompose_factor must be -1 (near the square root) or a positive integer, "
                f"got {self.decompose_factor!r}."
            )
