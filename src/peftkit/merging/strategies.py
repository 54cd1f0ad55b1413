"""Model-merging strategies as pure tensor functions (PEFT's ``peft.utils.merge_utils`` names).

Each strategy combines ``n`` task tensors ``t_1 .. t_n`` of one shape (LoRA factors or full delta weights)
with weights ``w_i`` (a 1-D tensor of length ``n``) into one tensor of the same shape:

* task arithmetic (Ilharco et al., 2023, arXiv:2212.04089): ``sum_i w_i t_i``;
* magnitude prune: task arithmetic on ``prune(t_i, density, "magnitude")``;
* TIES (Yadav et al., 2023, arXiv:2306.01708): trim each ``t_i`` to its ``density`` largest entries by
  magnitude, elect a sign per entry (:func:`calculate_majority_sign_mask`), and average the weighted entries that
  agree with it (:func:`disjoint_merge`);
* DARE (Yu et al., 2024, arXiv:2311.03099): drop each entry with probability ``1 - density`` and rescale the
  survivors by ``1 / density``, then task arithmetic (``dare_linear``) or TIES' sign election (``dare_ties``).

The random drop draws its mask with ``torch.bernoulli`` on a tensor like ``t_i`` filled with ``density``, one draw
per task tensor in order, so a fixed ``torch.manual_seed`` gives the same result as the reference.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch

from peftkit.errors import ConfigError

PruneMethod = Literal["magnitude", "random"]
SignMethod = Literal["total", "frequency"]


def reshape_weight_task_tensors(task_tensors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``weights (n,)`` viewed as ``(n, 1, ..., 1)`` to broadcast over stacked ``task_tensors (n, *shape)``."""
    return weights.view(weights.shape + (1,) * (task_tensors.dim() - weights.dim()))


def magnitude_based_pruning(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``int(density * numel)`` entries of largest ``|t|``, zero the rest (same shape as ``tensor``)."""
    keep = int(density * tensor.numel())
    flat_mask = torch.zeros(tensor.numel(), dtype=tensor.dtype, device=tensor.device)
    flat_mask[tensor.abs().reshape(-1).topk(keep).indices] = 1
    return tensor * flat_mask.view(tensor.shape)


def random_pruning(tensor: torch.Tensor, density: float, rescale: bool) -> torch.Tensor:
    """``t * m`` with ``m ~ Bernoulli(density)`` per entry; divided by ``density`` when ``rescale`` (so that the
    expectation is ``t``)."""
    kept = tensor * torch.bernoulli(torch.full_like(tensor, density))
    return kept / density if rescale else kept


def prune(tensor: torch.Tensor, density: float, method: PruneMethod, rescale: bool = False) -> torch.Tensor:
    """Sparsify ``tensor``, keeping a ``density`` fraction of its entries (by magnitude or at random).

    A ``density >= 1`` keeps everything (with a warning, as nothing is pruned).

    Raises:
        ConfigError: ``density < 0`` or an unknown ``method``.
    """
    if density >= 1:
        warnings.warn(f"density={density} is >= 1: nothing is pruned.", UserWarning, stacklevel=2)
        return tensor
    if density < 0:
        raise ConfigError(f"density must be in [0, 1], got {density}.")
    if method == "magnitude":
        return magnitude_based_pruning(tensor, density)
    if method == "random":
        return random_pruning(tensor, density, rescale=rescale)
    raise ConfigError(f"Unknown pruning method {method!r}; use 'magnitude' or 'random'.")


def calculate_majority_sign_mask(tensor: torch.Tensor, method: SignMethod = "total") -> torch.Tensor:
    """Boolean mask of the entries of stacked ``tensor (n, *shape)`` whose sign equals the elected sign.

    The elected sign per position is that of ``sum_i t_i`` (``"total"``) or of ``sum_i sign(t_i)``
    (``"frequency"``), with ``+1`` on ties at zero.

    Raises:
        ConfigError: an unknown ``method``.
    """
    signs = tensor.sign()
    if method == "total":
        votes = tensor.sum(dim=0)
    elif method == "frequency":
        votes = signs.sum(dim=0)
    else:
        raise ConfigError(f"Unknown majority_sign_method {method!r}; use 'total' or 'frequency'.")
    return signs == torch.where(votes >= 0, 1, -1)


def disjoint_merge(task_tensors: torch.Tensor, majority_sign_mask: torch.Tensor) -> torch.Tensor:
    """Mean over the agreeing entries: ``sum_i mask_i t_i / max(1, sum_i mask_i)`` of stacked ``(n, *shape)``."""
    total = (task_tensors * majority_sign_mask).sum(dim=0)
    return total / majority_sign_mask.sum(dim=0).clamp(min=1.0)


def _weighted(task_tensors: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """Stacked ``w_i t_i`` of shape ``(n, *shape)``."""
    stacked = torch.stack(task_tensors, dim=0)
    return stacked * reshape_weight_task_tensors(stacked, weights)


def task_arithmetic(task_tensors: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """``sum_i w_i t_i``."""
    return _weighted(task_tensors, weights).sum(dim=0)


def magnitude_prune(task_tensors: list[torch.Tensor], weights: torch.Tensor, density: float) -> torch.Tensor:
    """``sum_i w_i prune(t_i, density, "magnitude")``."""
    return task_arithmetic([prune(t, density, "magnitude") for t in task_tensors], weights)


def _sign_elected(pruned: list[torch.Tensor], weights: torch.Tensor, method: SignMethod) -> torch.Tensor:
    """TIES' elect-and-merge step on already pruned tensors (the sign is elected before weighting)."""
    mask = calculate_majority_sign_mask(torch.stack(pruned, dim=0), method=method)
    return disjoint_merge(_weighted(pruned, weights), mask)


def ties(
    task_tensors: list[torch.Tensor], weights: torch.Tensor, density: float, majority_sign_method: SignMethod = "total"
) -> torch.Tensor:
    """TIES: magnitude-prune each ``t_i``, elect a sign per entry, average the agreeing ``w_i t_i``."""
    return _sign_elected([prune(t, density, "magnitude") for t in task_tensors], weights, majority_sign_method)


def dare_linear(task_tensors: list[torch.Tensor], weights: torch.Tensor, density: float) -> torch.Tensor:
    """DARE + task arithmetic: ``sum_i w_i (m_i * t_i / density)``, ``m_i ~ Bernoulli(density)``."""
    return task_arithmetic([prune(t, density, "random", rescale=True) for t in task_tensors], weights)


def dare_ties(
    task_tensors: list[torch.Tensor], weights: torch.Tensor, density: float, majority_sign_method: SignMethod = "total"
) -> torch.Tensor:
    """DARE + TIES: random drop with rescaling, then TIES' sign election and disjoint mean."""
    dropped = [prune(t, density, "random", rescale=True) for t in task_tensors]
    return _sign_elected(dropped, weights, majority_sign_method)
