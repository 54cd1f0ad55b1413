"""LoHa configuration (Hyeon-Woo et al., 2022, "FedPara: Low-Rank Hadamard Product for Communication-Efficient
Federated Learning", arXiv:2108.06098), with PEFT's field names and defaults."""

from __future__ import annotations

from dataclasses import dataclass

from peftkit.methods.lycoris.config import LycorisConfig
from peftkit.types import PeftType


@dataclass
class LoHaConfig(LycorisConfig):
    """Configuration of a LoHa adapter: ``delta W = (alpha / r) * (W1a W1b) * (W2a W2b)`` (element-wise product
    of two rank-``r`` matrices, so its rank can reach ``r**2``).

    Shapes on a Linear ``(out, in)``: ``hada_w1_a``, ``hada_w2_a`` ``(out, r)``; ``hada_w1_b``, ``hada_w2_b``
    ``(r, in)``. On a convolution the kernel is flattened into ``in`` (``in / groups * prod(kernel)``), or,
    with ``use_effective_conv2d``, each product is ``einsum(t, W_b, W_a)`` with a core ``hada_t1/2`` of shape
    ``(r, r, *kernel)`` and ``hada_w*_a (r, out)``, ``hada_w*_b (r, in / groups)``.
    See :class:`~peftkit.methods.lycoris.config.LycorisConfig` for the fields; ``init_weights=True`` starts
    ``hada_w2_b`` at zero (``delta W = 0``), ``False`` starts every factor random. Rank dropout is always
    rescaled by the mean of its mask.
    """

    init_weights: bool = True

    def __post_init__(self) -> None:
        self.peft_type = PeftType("LOHA")
        super().__post_init__()  # the field's type admits only True / False
