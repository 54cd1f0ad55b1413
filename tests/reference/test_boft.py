"""BOFT against its formula: ``y = s * (W M^T x) + b`` with ``M = F_{m-1} ... F_0``, ``F_i = P_i diag(R_i1, ...)
P_i^T``, each block ``R = (I - S)(I + S)^{-1}`` with ``S = (A - A^T) / 2`` of a stored ``A`` (``boft_R (m, D, b, b)``)
and ``s`` = ``boft_s``. Conv2d convolves with ``W' = s * (W_flat M^T)``. The butterfly permutations are written
out by hand for a width of 8 with blocks of 2 (level ``i`` couples features ``2^i`` apart: the paper's Fig. 3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import peftkit as peft
from peftkit.methods.boft.butterfly import butterfly_permutation

#: Width 8, blocks of 2 (``(P B P^T)[j, k] = B[p[j], p[k]]``, so features ``j``, ``k`` share a block when ``p[j]``,
#: ``p[k]`` do): level 0 couples (0,1) (2,3) ...; level 1 couples (0,2) (1,3) (4,6) (5,7); level 2 (0,4) (1,5) ...
PERMUTATIONS = {0: [0, 1, 2, 3, 4, 5, 6, 7], 1: [0, 2, 1, 3, 4, 6, 5, 7], 2: [0, 2, 4, 6, 1, 3, 5, 7]}


def cayley_blocks(A: torch.Tensor) -> list[torch.Tensor]:
    """Oracle: ``(I - S)(I + S)^{-1}`` of ``S = (A - A^T)/2`` for each block of one factor ``A (D, b, b)``."""
    eye = torch.eye(A.shape[-1])
    return [(eye - S) @ torch.linalg.inv(eye + S) for S in (0.5 * (a - a.T) for a in A)]


def butterfly(stored: torch.Tensor) -> torch.Tensor:
    """Oracle: ``M = F_{m-1} ... F_0`` with permutation matrices built from :data:`PERMUTATIONS` (width 8)."""
    M = torch.eye(stored.shape[1] * stored.shape[2])
    for level, factor in enumerate(stored):
        P = torch.eye(M.shape[0])[PERMUTATIONS[level] if M.shape[0] == 8 else list(range(M.shape[0]))]
        M = P @ torch.block_diag(*cayley_blocks(factor)) @ P.T @ M
    return M


def adapted(base: nn.Module, **config: object) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """``(peft model, boft_R, boft_s)`` with random tensors."""
    config = {"target_modules": ["0"], "init_weights": False, **config}
    model = peft.get_peft_model(nn.Sequential(base), peft.BOFTConfig(**config))
    layer = model.base_model.model[0]
    return model, layer.boft_R["default"].detach().clone(), layer.boft_s["default"].detach().clone()


def test_permutations_pair_features_two_to_the_level_apart() -> None:
    for level, expected in PERMUTATIONS.items():
        assert butterfly_permutation(8, 2, level).tolist() == expected


def test_linear_one_factor_and_three_factors() -> None:
    for factors, size in ((1, 4), (3, 2)):
        base = nn.Linear(8, 5)
        W, b = base.weight.detach().clone(), base.bias.detach().clone()
        model, stored, s = adapted(base, boft_block_size=size, boft_n_butterfly_factor=factors)
        assert stored.shape == (factors, 8 // size, size, size) and s.shape == (5, 1)
        M = butterfly(stored)
        torch.testing.assert_close(M @ M.T, torch.eye(8), rtol=0, atol=1e-5)
        x = torch.randn(3, 8)
        out = model(x)
        torch.testing.assert_close(out, (x @ M @ W.T) * s.T + b, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(out, base(x), atol=1e-3)


def test_conv2d_convolves_with_the_scaled_rotated_filter() -> None:
    conv = nn.Conv2d(2, 3, kernel_size=2, stride=2, padding=1)  # flattened filter width 2 * 2 * 2 = 8
    W, b = conv.weight.detach().clone(), conv.bias.detach().clone()
    model, stored, s = adapted(conv, boft_block_size=2, boft_n_butterfly_factor=2)
    assert s.shape == (1, 3)
    filt = ((W.flatten(1) @ butterfly(stored).T) * s.T).view_as(W)
    x = torch.randn(2, 2, 5, 5)
    torch.testing.assert_close(model(x), F.conv2d(x, filt, b, stride=2, padding=1), rtol=1e-5, atol=1e-5)


def test_merge_and_unmerge_round_trip_the_weight() -> None:
    base = nn.Linear(8, 4)
    W = base.weight.detach().clone()
    model, stored, s = adapted(base, boft_block_size=2, boft_n_butterfly_factor=2)
    model.merge_adapter(safe_merge=True)
    torch.testing.assert_close(base.weight.detach(), (W @ butterfly(stored).T) * s, rtol=1e-5, atol=1e-5)
    model.unmerge_adapter()
    torch.testing.assert_close(base.weight.detach(), W, rtol=1e-5, atol=1e-5)
