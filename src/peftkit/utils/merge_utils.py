"""PEFT's ``peft.utils.merge_utils`` import path: the merge strategies of :mod:`peftkit.merging.strategies`
(nothing is defined here)."""

from peftkit.merging.strategies import (
    calculate_majority_sign_mask,
    dare_linear,
    dare_ties,
    disjoint_merge,
    magnitude_based_pruning,
    magnitude_prune,
    prune,
    random_pruning,
    reshape_weight_task_tensors,
    task_arithmetic,
    ties,
)

__all__ = [
    "calculate_majority_sign_mask",
    "dare_linear",
    "dare_ties",
    "disjoint_merge",
    "magnitude_based_pruning",
    "magnitude_prune",
    "prune",
    "random_pruning",
    "reshape_weight_task_tensors",
    "task_arithmetic",
    "ties",
]
