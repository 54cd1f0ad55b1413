"""Orthogonal block matrices shared by OFT and BOFT (Qiu et al., 2023, arXiv:2306.07280; Liu et al., 2024,
arXiv:2311.06243): skew-symmetric parametrisations, the Cayley transform, block rotations, block dropout and
the split of a layer's input width into blocks.

Conventions: a batch of ``n`` square blocks is ``(n, b, b)``; a vector ``x (..., n * b)`` is rotated block by
block as a row vector, ``x_k -> x_k R_k``. Everything here is a pure tensor function.
"""

from __future__ import annotations

import functools
import math
import warnings

import torch
from torch import nn

from peftkit.errors import ConfigError, TargetingError, UnsupportedError
from peftkit.quant.base import weight_shape


@functools.lru_cache(maxsize=64)
def _upper_indices(size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices of the strict upper triangle of a ``size x size`` matrix, row-major.

    Cached, so built outside inference mode even when first asked for inside it: an inference tensor kept here
    would break every later training forward (autograd cannot save it for backward)."""
    with torch.inference_mode(False):
        rows, cols = torch.triu_indices(size, size, 1, device=device)
    return rows, cols


def skew_from_upper(vec: torch.Tensor, block_size: int) -> torch.Tensor:
    """The skew-symmetric blocks ``S = U - U^T`` whose strict upper triangles ``U`` are the rows of ``vec``.

    Args:
        vec: ``(n, b (b - 1) / 2)``, row-major order of the strict upper triangle (OFT's stored ``oft_R``).
        block_size: ``b``.

    Returns:
        ``(n, b, b)`` in ``vec``'s dtype.
    """
    rows, cols = _upper_indices(block_size, vec.device)
    upper = vec.new_zeros(vec.shape[0], block_size, block_size)
    upper[:, rows, cols] = vec
    return upper - upper.transpose(-2, -1)


def upper_of(skew: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`skew_from_upper`: the strict upper triangles of ``(n, b, b)`` as ``(n, b (b - 1) / 2)``."""
    rows, cols = _upper_indices(skew.shape[-1], skew.device)
    return skew[:, rows, cols]


def skew_part(blocks: torch.Tensor) -> torch.Tensor:
    """``S = (A - A^T) / 2`` of square blocks ``(..., b, b)`` (BOFT stores full ``A``)."""
    return 0.5 * (blocks - blocks.transpose(-2, -1))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def cayley(skew: torch.Tensor) -> torch.Tensor:
    """Exact Cayley transform ``R = (I - S) (I + S)^{-1}`` of skew-symmetric blocks ``(n, b, b)``.

    ``R`` is orthogonal for every skew-symmetric ``S`` and ``R = I`` at ``S = 0``. Solved (not inverted) in at
    least float32; returned in ``skew``'s dtype.
    """
    work = skew.to(_compute_dtype(skew.dtype))
    eye = torch.eye(skew.shape[-1], device=skew.device, dtype=work.dtype).expand_as(work)
    return torch.linalg.solve(eye + work, eye - work, left=False).to(skew.dtype)


def cayley_neumann(skew: torch.Tensor, terms: int) -> torch.Tensor:
    """Truncated Neumann series of the Cayley transform ``(I + S) (I - S)^{-1} = I + 2 S + 2 S^2 + ...``.

    The series as PEFT 0.21.2 computes it (the adapters it saves depend on it): ``I`` for ``terms <= 1``,
    ``I + 2 S`` for ``terms == 2``, and ``I + 2 (S + ... + S^{m-1}) + S^m`` with ``m = max(terms - 1, 3)``
    otherwise (so ``terms`` 3 and 4 give the same series). Only approximately orthogonal, no inverse needed.

    Args:
        skew: ``(n, b, b)`` skew-symmetric blocks.
        terms: ``num_cayley_neumann_terms``.
    """
    result = torch.eye(skew.shape[-1], device=skew.device, dtype=skew.dtype).repeat(skew.shape[0], 1, 1)
    if terms <= 1:
        return result
    result.add_(skew, alpha=2.0)  # in place on a fresh tensor: autograd records the adds, no copies
    if terms == 2:
        return result
    power = skew @ skew
    result.add_(power, alpha=2.0)
    for _ in range(3, terms - 1):
        power = power @ skew
        result.add_(power, alpha=2.0)
    return result.add_(power @ skew)


def project_to_ball(vec: torch.Tensor, block_size: int, eps: float) -> torch.Tensor:
    """COFT's constraint (Qiu et al., 2023, Sec. 4): each block's skew matrix ``S`` is pulled back onto the
    Frobenius ball ``||S||_F <= eps / sqrt(n)`` around zero (``n`` = rows of ``vec``); blocks inside stay.

    Args:
        vec: ``(n, b (b - 1) / 2)`` upper triangles (see :func:`skew_from_upper`).

    Returns:
        The projected triangles, same shape.
    """
    skew = skew_from_upper(vec, block_size)
    radius = eps / math.sqrt(vec.shape[0])
    norm = torch.linalg.matrix_norm(skew, keepdim=True)
    inside = norm <= radius
    projected = torch.where(inside, skew, radius * skew / torch.where(inside, torch.ones_like(norm), norm))
    return upper_of(projected)


def rotate_blocks(x: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """``x (..., n * b)`` with each of its ``n`` slices ``x_k (b,)`` replaced by ``x_k R_k``.

    Args:
        blocks: ``(n, b, b)``; pass ``blocks.mT`` for ``x_k R_k^T`` (rotating weight rows instead of inputs).
    """
    count, size = blocks.shape[0], blocks.shape[-1]
    sliced = x.reshape(*x.shape[:-1], count, size)
    return torch.einsum("...rk,rkc->...rc", sliced, blocks).reshape(x.shape)


def drop_blocks(blocks: torch.Tensor, p: float) -> torch.Tensor:
    """Multiplicative dropout (OFT / BOFT): in one randomly chosen factor ``i`` of ``blocks (N, D, b, b)``,
    ``floor(p * D)`` randomly chosen blocks become the identity; the others are kept."""
    factors, count, size = blocks.shape[0], blocks.shape[1], blocks.shape[-1]
    dropped = int(p * count)
    if dropped == 0:
        return blocks
    mask = torch.zeros(factors, count, 1, 1, device=blocks.device, dtype=blocks.dtype)
    which = torch.randperm(count, device=blocks.device)[:dropped]
    mask[int(torch.randint(0, factors, (1,)).item()), which] = 1.0
    eye = torch.eye(size, device=blocks.device, dtype=blocks.dtype)
    return (1 - mask) * blocks + mask * eye


def nearest_divisors(dim: int, value: int) -> list[int]:
    """The divisors of ``dim`` closest to ``value`` (at most two, smaller first), for error messages."""
    divisors = [d for d in range(1, dim + 1) if dim % d == 0]
    return sorted(sorted(divisors, key=lambda d: (abs(d - value), d))[:2])


def split_width(
    dim: int, size: int, count: int, fields: tuple[str, str], where: str, owner: str, adjust: bool = False
) -> tuple[int, int]:
    """``(block size, number of blocks)`` for a layer of input width ``dim`` from the one that is set.

    Args:
        dim: The width rotated: ``in_features``, or ``in_channels * k * k`` for a ``k x k`` convolution.
        size: The configured block size (0: derive it from ``count``).
        count: The configured number of blocks (0: derive it from ``size``).
        fields: The config field names of ``size`` and ``count`` (for messages).
        where: The module, e.g. ``"module 'q_proj' (in_features 16)"``.
        owner: The config class name.
        adjust: A value that does not divide ``dim`` becomes the divisor of ``dim`` nearest to it (the smaller one
            on a tie), with a ``UserWarning``: OFT's rule in PEFT, which applies it again at load time, so that
            its adapters saved with such a config load with the same shapes. ``False`` (BOFT): raise.

    Raises:
        ConfigError: the value that is set does not divide ``dim`` (and ``adjust`` is off).
    """
    value, field = (size, fields[0]) if size else (count, fields[1])
    if value > dim or dim % value:
        if not adjust:
            near = " or ".join(str(d) for d in nearest_divisors(dim, value))
            raise ConfigError(
                f"{owner}.{field}={value} does not divide the width {dim} of {where}; set {field} to a divisor of "
                f"{dim} (nearest: {near}) or leave this module out of target_modules."
            )
        adjusted = min((d for d in range(1, dim + 1) if dim % d == 0), key=lambda d: (abs(d - value), d))
        warnings.warn(
            f"{owner}.{field}={value} does not divide the width {dim} of {where}; this module uses {field}="
            f"{adjusted}, the nearest divisor (PEFT's rule, so that the stored shapes agree).",
            UserWarning,
            stacklevel=5,
        )
        size, count = (adjusted, 0) if size else (0, adjusted)
    return (size, dim // size) if size else (dim // count, count)


def rotated_width(module: nn.Module, owner: str, name: str) -> int:
    """The width an orthogonal adapter rotates in ``module``: ``in_features`` of a Linear, ``embedding_dim`` of an
    Embedding, ``C_in * k * k`` of a square ``k x k`` Conv2d (the flattened filter, channel-major).

    Raises:
        UnsupportedError: a Conv2d with ``groups > 1`` (a ``NotImplementedError``, as PEFT's BOFT raises: the
            rotation would span all input channels while each group's filter sees only its own).
        TargetingError: a Conv2d with a non-square kernel or ``dilation > 1`` (PEFT's layers do not handle them:
            they read ``kernel_size[0]`` only, and ignore or refuse dilation).
    """
    if not isinstance(module, nn.Conv2d):
        return int(weight_shape(module)[1])
    if module.groups != 1:
        raise UnsupportedError(
            f"{owner} cannot adapt the grouped Conv2d {name!r} (groups={module.groups}): its rotation would span "
            f"all {module.in_channels} input channels, a group's filter sees {module.in_channels // module.groups}; "
            "leave it out of target_modules (or add it to exclude_modules)."
        )
    problems = []
    if module.kernel_size[0] != module.kernel_size[1]:
        problems.append(f"a non-square kernel {tuple(module.kernel_size)}")
    if tuple(module.dilation) != (1, 1):
        problems.append(f"dilation={tuple(module.dilation)}")
    if problems:
        raise TargetingError(
            f"{owner} cannot adapt the Conv2d {name!r}: it has {' and '.join(problems)}, which the PEFT format of "
            "this method does not describe; leave it out of target_modules (or add it to exclude_modules)."
        )
    return int(module.in_channels * module.kernel_size[0] * module.kernel_size[1])
