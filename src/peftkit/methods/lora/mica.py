"""MiCA, Minor Component Adaptation (``init_lora_weights="mica"``; PEFT's variant, arXiv 2604.01694).

Where PiSSA starts from the base weight's principal directions, MiCA adapts along its minor ones: with the SVD
``W = U S V^T`` (singular values descending) of the base weight ``W: (out, in)``::

    B = U[:, -r:]        (out, r)   the left singular vectors of the r smallest singular values, frozen
    A = 0                (r, in)    the only factor that trains

so ``B A = 0`` at the start (the base weight is left untouched) and every update ``s B dA`` lies in the span of
the minor directions. Forward and merge are plain LoRA's. For an embedding table ``E: (num, dim)`` the
projection is ``E^T``: ``lora_embedding_B = U[:, -r:]`` of ``E^T`` ``(dim, r)`` and ``lora_embedding_A = 0``
``(r, num)``. LoRA on ``nn.Linear`` / ``Conv1D`` / ``nn.Embedding`` only, as in PEFT.
"""

from __future__ import annotations

import torch

from peftkit.errors import ConfigError
from peftkit.methods.lora.init import require_matrix_factors, write_factors_


def mica_factors(weight: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A = 0 (r, in), B = U[:, -r:] (out, r))`` in float32 for a weight ``(out, in)``.

    Raises:
        ConfigError: ``r > min(out, in)`` (there are only that many singular directions).
    """
    w = weight.detach().float()
    if r > min(w.shape):
        raise ConfigError(
            f"init_lora_weights='mica' takes the r smallest singular directions of the base weight, which has only "
            f"{min(w.shape)} (shape {tuple(w.shape)}); got r={r}. Lower r (or its rank_pattern entry)."
        )
    u, _, _ = torch.linalg.svd(w, full_matrices=False)
    return torch.zeros(r, w.shape[1], device=w.device), u[:, -r:].contiguous()


def init_mica_(A: torch.Tensor, B: torch.Tensor, weight: torch.Tensor, r: int) -> None:
    """Fill ``A (r, in)`` and ``B (out, r)`` in place with :func:`mica_factors` of ``weight (out, in)``, rounded
    through ``weight``'s dtype as the reference stores them.

    Raises:
        ConfigError: see :func:`mica_factors`.
        UnsupportedError: the factors are not a Linear or Embedding layer's (a convolution's, per-expert ones).
    """
    require_matrix_factors(A, r, "mica", "Linear / Conv1D / Embedding")
    if A.device.type == "meta":
        return
    new_A, new_B = mica_factors(weight, r)
    write_factors_(A, B, new_A, new_B, weight.dtype)
