"""Butterfly factors of BOFT (Liu et al., 2024, arXiv:2311.06243, Sec. 4): the block split of a layer under
``m`` factors and the permutations ``P_i`` that make factor ``i`` mix features ``b * 2^(i-1)`` apart.

Factor ``i`` (0-based) is ``P_i diag(R_i1, ..., R_iD) P_i^T``; as indices, ``(P B P^T)[j, k] = B[p[j], p[k]]``.
The permutation of level ``i`` cuts the width into chunks of ``b * 2^i`` features, each chunk into halves of
blocks (``b / 2`` features), and lists the even-numbered halves first, then the odd ones (PEFT's order).
"""

from __future__ import annotations

import functools
import math

import torch

from peftkit.errors import ConfigError
from peftkit.methods.oft.orthogonal import rotate_blocks


@functools.lru_cache(maxsize=256)
def butterfly_permutation(width: int, block_size: int, level: int) -> torch.Tensor:
    """The index permutation ``p (width,)`` of butterfly level ``level`` (level 0 is the identity).

    Cached, so built outside inference mode even when first asked for inside it (an inference tensor kept here
    would break later training forwards).

    Args:
        width: The rotated width (a multiple of ``block_size * 2^level``).
        block_size: ``b`` (even when ``level > 0``).
    """
    with torch.inference_mode(False):
        if level == 0:
            return torch.arange(width)
        half = block_size // 2
        chunk = block_size * 2**level
        pieces = chunk // half
        order = [*range(0, pieces, 2), *range(1, pieces, 2)]
        within = torch.cat([torch.arange(p * half, (p + 1) * half) for p in order])
        return torch.cat([start + within for start in range(0, width, chunk)])


def check_butterfly(width: int, block_size: int, block_num: int, factors: int, where: str) -> None:
    """Whether ``factors`` butterfly factors fit a width split into ``block_num`` blocks of ``block_size``.

    Raises:
        ConfigError: with ``factors > 1``, the width is not a multiple of ``block_size * 2^(factors-1)``, or the
            block size or count is odd.
    """
    if factors == 1:
        return
    span = block_size * 2 ** (factors - 1)
    problems = []
    if width % span:
        problems.append(f"the width {width} is not a multiple of boft_block_size * 2^(factors-1) = {span}")
    if block_size % 2 or block_num % 2:
        problems.append(f"the block size {block_size} and count {block_num} must both be even")
    if problems:
        most = int(math.log2(block_num)) + 1 if block_num > 0 else 1
        raise ConfigError(
            f"BOFTConfig.boft_n_butterfly_factor={factors} does not fit {where}: {'; '.join(problems)}. Use fewer "
            f"factors (at most about {most}) or a block size that splits the width into a power of two of blocks."
        )


def apply_butterfly(x: torch.Tensor, blocks: torch.Tensor, width: int, transpose: bool = False) -> torch.Tensor:
    """``x M`` (or ``x M^T`` with ``transpose``) for row vectors ``x (..., width)``, without building ``M``.

    ``x F_i = ((x P_i) diag(blocks[i])) P_i^T`` with ``x P = x[..., p^{-1}]`` and ``x P^T = x[..., p]``: a gather,
    a block rotation and a gather per factor, ``O(width b)`` instead of ``O(width^2)`` per row.

    Args:
        blocks: ``(m, D, b, b)`` orthogonal blocks.
    """
    levels = range(blocks.shape[0]) if transpose else reversed(range(blocks.shape[0]))
    for level in levels:
        perm = butterfly_permutation(width, blocks.shape[-1], level).to(x.device)
        factor = blocks[level].mT if transpose else blocks[level]
        x = rotate_blocks(x[..., torch.argsort(perm)], factor)[..., perm]
    return x


def butterfly_matrix(blocks: torch.Tensor, width: int) -> torch.Tensor:
    """``M = F_{m-1} ... F_0 (width, width)`` with ``F_i = P_i diag(blocks[i]) P_i^T`` for ``blocks (m, D, b, b)``."""
    result: torch.Tensor | None = None
    for level in range(blocks.shape[0]):
        diagonal = torch.block_diag(*blocks[level].unbind(0))
        perm = butterfly_permutation(width, blocks.shape[-1], level).to(blocks.device)
        factor = diagonal[perm][:, perm]
        result = factor if result is None else factor @ result
    assert result is not None
    return result
