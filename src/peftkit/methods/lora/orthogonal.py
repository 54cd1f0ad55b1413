"""Orthogonal LoRA initialisation (``init_lora_weights="orthogonal"``; PEFT's option, after D. Datta, "Rethinking
LoRA initialisations", 2024).

Draw a random ``r x r`` orthogonal matrix ``Q`` (QR of a standard normal matrix) and split its rows into the odd
and even ones, ``Q_o, Q_e: (r/2, r)``, so that ``Q_e Q_o^T = 0``. With standard normal ``X: (in, r/2)`` and
``Y: (r/2, out)``::

    A = (X Q_o)^T / 10        (r, in)
    B = Y^T Q_e / 10          (out, r)

Both factors are non-zero (so both receive gradients from the first step, unlike ``B = 0``), yet
``B A = Y^T Q_e Q_o^T X^T / 100 = 0``: the adapter starts as the identity and the base weight is left untouched
(unlike OLoRA). Needs an even rank; LoRA on ``nn.Linear`` / ``Conv1D`` only (as in PEFT).
"""

from __future__ import annotations

import torch

from peftkit.errors import ConfigError
from peftkit.methods.lora.init import require_matrix_factors, write_factors_


def orthogonal_factors(r: int, in_features: int, out_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A (r, in), B (out, r))`` in float32 on the CPU, drawn from torch's global generator in PEFT's order
    (``Q``'s matrix, then ``X``, then ``Y``), so the same seed gives the reference's factors."""
    q, _ = torch.linalg.qr(torch.randn(r, r))
    q_odd, q_even = q[0::2, :], q[1::2, :]
    A = (torch.randn(in_features, r // 2) @ q_odd).T / 10.0
    B = torch.randn(r // 2, out_features).T @ q_even / 10.0
    return A.contiguous(), B.contiguous()


def init_orthogonal_(A: torch.Tensor, B: torch.Tensor, r: int, base_dtype: torch.dtype) -> None:
    """Fill ``A (r, in)`` and ``B (out, r)`` in place with :func:`orthogonal_factors`, rounded through the base
    weight's dtype as the reference stores them (its factors take the base dtype before any adapter autocast).
    A ``lora_B`` bias (``lora_bias=True``) is zeroed by the caller, so the adapter starts as the identity.

    Raises:
        ConfigError: ``r`` is odd.
        UnsupportedError: the factors are not a Linear layer's (a convolution's or per-expert parameters').
    """
    if r % 2:
        raise ConfigError(
            f"init_lora_weights='orthogonal' splits an r x r orthogonal matrix into two halves, so r must be even; "
            f"got r={r}. Use an even r (or rank_pattern entry)."
        )
    require_matrix_factors(A, r, "orthogonal", "Linear / Conv1D")
    if A.device.type == "meta":
        return
    new_A, new_B = orthogonal_factors(r, A.shape[1], B.shape[0])
    write_factors_(A, B, new_A, new_B, base_dtype)
