"""LoRA's scaling factor, in one place for the layers, hot-swap and the command line.

``s = alpha / r`` (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models"), or with rank-stabilised
LoRA ``s = alpha / sqrt(r)`` (Kalajdzievski, 2023, "A Rank Stabilization Scaling Factor for Fine-Tuning with
LoRA"), so that the update ``s * B A`` keeps its size as the rank grows.
"""

from __future__ import annotations

import math


def lora_scaling(alpha: float, r: int, use_rslora: bool = False) -> float:
    """``alpha / r``, or ``alpha / sqrt(r)`` with ``use_rslora`` (dimensionless; ``r >= 1``)."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def alpha_for_scaling(scaling: float, r: int, use_rslora: bool = False) -> float:
    """The ``alpha`` that gives ``scaling`` at rank ``r`` (the inverse of :func:`lora_scaling`), e.g. for an
    adapter padded to a larger rank whose output must not change."""
    return scaling * (math.sqrt(r) if use_rslora else r)
