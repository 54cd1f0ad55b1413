"""Combining LoRA adapters into a new one (PEFT's ``add_weighted_adapter``), one layer at a time.

For adapters ``i`` with weights ``w_i``, scalings ``s_i`` and factors ``A_i (r_i, in)``, ``B_i (out, r_i)``, the
new adapter (scaling 1: ``lora_alpha = r``) gets, per ``combination_type``:

* ``cat``: ``A = [w_1 s_1 A_1; w_2 s_2 A_2; ...]`` (rows), ``B = [B_1, B_2, ...]`` (columns), so
  ``B A = sum_i w_i s_i B_i A_i`` exactly, at rank ``sum_i r_i``;
* ``linear``, ``ties``, ``dare_linear``, ``dare_ties``, ``magnitude_prune`` (equal ranks): the strategy of
  :mod:`peftkit.merging.strategies` applied to the ``A_i`` with weights ``sign(w_i s_i) sqrt(|w_i s_i|)`` and to
  the ``B_i`` with weights ``sqrt(|w_i s_i|)`` separately (an approximation: ``B A != sum_i w_i s_i B_i A_i``);
* ``svd``, ``ties_svd``, ``dare_linear_svd``, ``dare_ties_svd``, ``magnitude_prune_svd``: the strategy applied
  to the full deltas ``s_i B_i A_i``, then truncated to rank ``r`` by SVD ``U S V^T``: ``B = U_r S_r``,
  ``A = V_r^T`` (entries optionally clamped to the ``svd_clamp`` quantile of ``|.|``).

Random numbers: the new adapter is allocated uninitialised (every tensor is written here), so the only draws are
DARE's masks, in the reference's order (layers in module order; per layer the ``A_i`` then the ``B_i``, or one
per delta). The reference initialises the new layers first (``nn.Linear`` constructors and the LoRA init draw),
so for one ``torch.manual_seed`` its masks come from a later point of the stream than peftkit's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from peftkit.errors import ConfigError, UsageError
from peftkit.merging import strategies
from peftkit.methods.lora.embedding import Embedding
from peftkit.methods.lora.layer import LoraLayer

#: Combinations of the factors ``A``, ``B`` (all ranks equal).
FACTOR_TYPES = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
#: Combinations of the full deltas, truncated by SVD.
SVD_TYPES = ("svd", "ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd")
COMBINATION_TYPES = ("cat", *FACTOR_TYPES, *SVD_TYPES)
_NEEDS_DENSITY = {"ties", "dare_linear", "dare_ties", "magnitude_prune"}


@dataclass(frozen=True)
class Combination:
    """How to combine: the resolved type, the new rank and the strategy's options."""

    kind: str
    rank: int
    density: float | None = None
    majority_sign_method: strategies.SignMethod = "total"
    svd_clamp: float | None = None
    svd_full_matrices: bool = True
    svd_driver: str | None = None

    def strategy(self) -> Callable[[list[torch.Tensor], torch.Tensor], torch.Tensor]:
        """The merge strategy of :mod:`~peftkit.merging.strategies` for this type (``*_svd`` -> its base)."""
        base = self.kind.removesuffix("_svd")
        if base in ("svd", "linear"):
            return strategies.task_arithmetic
        if base in ("ties", "dare_ties"):
            method = self.majority_sign_method
            fn = strategies.ties if base == "ties" else strategies.dare_ties
            return lambda tensors, weights: fn(tensors, weights, self.density, method)  # type: ignore[arg-type]  # checked by plan_combination
        fn2 = strategies.dare_linear if base == "dare_linear" else strategies.magnitude_prune
        return lambda tensors, weights: fn2(tensors, weights, self.density)  # type: ignore[arg-type]  # checked by plan_combination


def plan_combination(kind: str, ranks: Sequence[int], svd_rank: int | None, **options: Any) -> Combination:
    """Resolve the combination type and the new rank (PEFT's rules).

    One adapter always combines linearly. ``cat`` gives rank ``sum(ranks)``; the factor types need equal ranks
    and keep it; the SVD types give ``svd_rank`` (default ``max(ranks)``).

    Raises:
        ConfigError: an unknown ``kind``, unequal ranks for a factor type, a pruning type without ``density`` or a
        ``density`` outside ``[0, 1]``, an unknown ``majority_sign_method``.
    """
    if kind not in COMBINATION_TYPES:
        raise ConfigError(f"Unknown combination_type {kind!r}; use one of {', '.join(COMBINATION_TYPES)}.")
    kind = "linear" if len(ranks) == 1 else kind
    if kind in FACTOR_TYPES and len(set(ranks)) != 1:
        raise ConfigError(
            f"combination_type={kind!r} needs adapters of one rank, got ranks {list(ranks)}; use 'cat' or an "
            "'*svd' type to combine different ranks."
        )
    rank = sum(ranks) if kind == "cat" else (svd_rank or max(ranks)) if kind in SVD_TYPES else ranks[0]
    density = options.get("density")
    if kind.removesuffix("_svd") in _NEEDS_DENSITY and (density is None or not 0 <= density <= 1):
        raise ConfigError(f"combination_type={kind!r} needs density in [0, 1], got {density!r}.")
    if options.get("majority_sign_method", "total") not in ("total", "frequency"):
        raise ConfigError(
            f"majority_sign_method must be 'total' or 'frequency', got {options['majority_sign_method']!r}."
        )
    return Combination(kind, rank, **options)


def _sources(layer: LoraLayer, adapters: Sequence[str], weights: Sequence[float]) -> list[tuple[str, float]]:
    present = layer.lora_embedding_A if isinstance(layer, Embedding) else layer.lora_A
    found = [(a, float(w)) for a, w in zip(adapters, weights, strict=True) if a in present]
    if not found:
        raise UsageError(f"None of the adapters {list(adapters)} is in a layer that the combined adapter targets.")
    return found


def _write(target: torch.Tensor, value: torch.Tensor, what: str) -> None:
    if value.shape != target.shape:
        raise UsageError(
            f"The combined {what} has shape {tuple(value.shape)} but the new adapter's is {tuple(target.shape)} (the "
            "adapters' ranks differ in this layer, e.g. through rank_pattern); use combination_type='cat' or an "
            "'*svd' type."
        )
    target.copy_(value.to(target.dtype))


def combine_layer(
    layer: LoraLayer, new: str, adapters: Sequence[str], weights: Sequence[float], how: Combination
) -> None:
    """Write the combination of ``adapters`` into adapter ``new`` of ``layer`` (see the module docstring).

    Raises:
        UsageError: none of ``adapters`` is in ``layer``, or the combined factors do not fit the new rank.
    """
    sources = _sources(layer, adapters, weights)
    A, B = layer.factor_tensors(new)
    with torch.no_grad():
        A.zero_()
        B.zero_()
        _reset_extras(layer, new)
        if how.kind == "cat":
            pairs = [(layer.factor_tensors(a), w, layer.scaling[a]) for a, w in sources]
            cat_A = torch.cat([a * w * s for (a, _), w, s in pairs], dim=0)
            cat_B = torch.cat([b for (_, b), _, _ in pairs], dim=1)
            A[: cat_A.shape[0]] = cat_A
            B[:, : cat_B.shape[1]] = cat_B
        elif how.kind in SVD_TYPES:
            new_A, new_B = _svd_factors(layer, sources, how, A.shape[0])
            _write(A, new_A.reshape(A.shape), "lora_A")
            _write(B, new_B.reshape(B.shape), "lora_B")
        else:
            new_A, new_B = _combined_factors(layer, sources, how)
            _write(A, new_A, "lora_A")
            _write(B, new_B, "lora_B")


def _reset_extras(layer: LoraLayer, new: str) -> None:
    """A zero ``lora_B`` bias, and the DoRA magnitude of the zero adapter (the base rows' norms ``||W||``), which
    is where PEFT's default initialisation leaves them before the factors are combined."""
    bias = getattr(layer.lora_B[new], "bias", None) if new in layer.lora_B else None
    if bias is not None:
        bias.zero_()
    if layer.use_dora.get(new):
        magnitude: torch.Tensor = layer.lora_magnitude_vector[new].weight  # type: ignore[assignment]  # a DoraMagnitude
        magnitude.copy_(layer.dora_norm(new).to(magnitude.dtype).view_as(magnitude))


def _combined_factors(
    layer: LoraLayer, sources: list[tuple[str, float]], how: Combination
) -> tuple[torch.Tensor, torch.Tensor]:
    """The strategy on the ``A_i`` and on the ``B_i``, each weighted by a square root of ``|w_i s_i|`` (the sign
    goes on ``A`` only, so that it is not cancelled)."""
    scaled = [w * layer.scaling[a] for a, w in sources]
    roots = [math.sqrt(abs(v)) for v in scaled]
    factors = [layer.factor_tensors(a) for a, _ in sources]
    device = factors[0][0].device
    weights_A = torch.tensor([root if v >= 0 else -root for root, v in zip(roots, scaled)]).to(device)
    weights_B = torch.tensor(roots).to(device)
    strategy = how.strategy()
    new_A = strategy([a.detach() for a, _ in factors], weights_A)
    new_B = strategy([b.detach() for _, b in factors], weights_B)
    return new_A, new_B


def _svd_factors(
    layer: LoraLayer, sources: list[tuple[str, float]], how: Combination, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` of the rank-``rank`` truncated SVD of the combined delta, as matrices ``(r, in)``, ``(out, r)``."""
    deltas = [layer.delta_weight(a).detach() for a, _ in sources]
    weights = torch.tensor([w for _, w in sources]).to(deltas[0].device)
    delta = how.strategy()(deltas, weights)
    # As a matrix ``(out, in)`` with ``B A = delta``: transposed for (in, out) storage and embedding tables,
    # kernels flattened to ``(out, in * k...)``.
    matrix = delta.T if layer.fan_in_fan_out or isinstance(layer, Embedding) else delta.flatten(1)
    if rank > min(matrix.shape):
        raise UsageError(
            f"svd_rank {rank} exceeds the rank a {tuple(matrix.shape)} delta can have in {type(layer).__name__} layer; "
            f"use svd_rank <= {min(matrix.shape)}."
        )
    U, S, Vh = torch.linalg.svd(matrix, full_matrices=how.svd_full_matrices, driver=how.svd_driver)
    U, Vh = U[:, :rank] @ torch.diag(S[:rank]), Vh[:rank, :]
    if how.svd_clamp is not None:
        high = torch.quantile(torch.cat([U.flatten(), Vh.flatten()]), how.svd_clamp)
        U, Vh = U.clamp(-high, high), Vh.clamp(-high, high)
    return Vh, U
