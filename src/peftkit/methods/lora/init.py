"""LoRA weight initialisations.

* ``True``: ``A`` Kaiming-uniform (``a = sqrt(5)``), ``B = 0``, so the adapter starts as the identity.
* ``False``: both random (useful for tests: the adapter changes the output from the start).
* ``"gaussian"``: ``A ~ N(0, 1/r)``, ``B = 0``.
* ``"pissa"`` / ``"pissa_niter_N"`` (Meng et al., 2024, "PiSSA"): ``W = U S V^T``; ``B = U_r sqrt(S_r/s)``,
  ``A = sqrt(S_r/s) V_r^T`` and the base keeps the residual ``W - s B A`` (exact SVD, or randomized with N
  subspace iterations).
* ``"olora"`` (Büyükakyüz, 2024, "OLoRA"): ``W = Q R``; ``B = Q[:, :r]``, ``A = R[:r]``, residual in the base.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from peftkit.errors import UnsupportedError

_PISSA_NITER = re.compile(r"pissa_niter_(\d+)")


def kaiming_uniform_(tensor: torch.Tensor, a: float = math.sqrt(5)) -> torch.Tensor:
    """``nn.init.kaiming_uniform_`` (leaky-ReLU gain, fan-in mode) in one op: the same bound, computed the same
    way (so the same values for the same random state), without its per-call bookkeeping."""
    fan_in = tensor[0].numel() if tensor.dim() > 1 else tensor.numel()
    bound = math.sqrt(3.0) * (math.sqrt(2.0 / (1 + a**2)) / math.sqrt(fan_in))
    return tensor.uniform_(-bound, bound)


def init_linear_pair(A: torch.Tensor, B: torch.Tensor, mode: bool | str, r: int) -> None:
    """Initialise ``A (r, ...)`` and ``B (out, r, ...)`` in place for the data-free modes (nothing to do for
    tensors on the meta device, which hold no data)."""
    if A.device.type == "meta":
        return
    with torch.no_grad():
        if mode is False:
            kaiming_uniform_(A)
            kaiming_uniform_(B)
        elif mode == "gaussian":
            nn.init.normal_(A, std=1.0 / r)
            B.zero_()
        else:
            kaiming_uniform_(A)
            B.zero_()


def is_weight_decomposing(mode: bool | str) -> bool:
    """Whether ``mode`` derives ``A`` and ``B`` from the base weight (and rewrites it)."""
    return isinstance(mode, str) and (
        mode in ("pissa", "olora", "corda", "loftq") or _PISSA_NITER.fullmatch(mode) is not None
    )


def decompose_weight(
    weight: torch.Tensor,
    mode: str,
    r: int,
    scaling: float,
    base: nn.Module | None = None,
    loftq: dict[str, int] | None = None,
) -> tuple[torch.Tensor, ...]:
    """PiSSA / OLoRA / CorDA / LoftQ factors of ``weight (out, in)`` (CorDA's from the decomposition that
    :func:`~peftkit.methods.lora.corda.preprocess_corda` left on ``base``; LoftQ's with ``loftq`` the config's
    ``loftq_config``).

    Returns:
        ``(A (r, in), B (out, r), residual (out, in))`` in float32, with ``residual + scaling * B @ A == weight``
        (LoftQ: ``residual`` is the quantized weight and ``B @ A`` approximates ``weight - residual``).
    """
    if mode == "loftq":
        from peftkit.methods.lora.loftq import loftq_decomposition

        return loftq_decomposition(base, weight, r, loftq)
    if mode == "corda":
        from peftkit.methods.lora.corda import corda_decomposition  # corda.py imports init.py's users

        return corda_decomposition(base, weight, r, scaling)
    w = weight.detach().float()
    if mode == "olora":
        q, rr = torch.linalg.qr(w)
        B, A = q[:, :r].contiguous(), rr[:r].contiguous()
    else:
        niter = _PISSA_NITER.fullmatch(mode)
        if niter:
            u, s, v = torch.svd_lowrank(w, q=r, niter=int(niter.group(1)))
            vh = v.t()
        else:
            u, s, vh = torch.linalg.svd(w, full_matrices=False)
        root = torch.sqrt(s[:r] / scaling)
        A = (root[:, None] * vh[:r]).contiguous()
        B = (u[:, :r] * root[None, :]).contiguous()
    residual = w - scaling * (B @ A)
    return A, B, residual


def require_matrix_factors(A: torch.Tensor, r: int, init: str, layers: str) -> None:
    """Refuse ``init_lora_weights=init`` unless ``A`` is a plain ``(r, in)`` matrix (a Linear / Conv1D /
    Embedding layer's, not a convolution's nor per-expert parameters').

    Raises:
        UnsupportedError: naming the layers ``init`` supports.
    """
    if A.dim() != 2 or A.shape[0] != r:
        raise UnsupportedError(
            f"init_lora_weights={init!r} is implemented for LoRA on {layers} layers only (as in PEFT); leave "
            "convolutions and target_parameters out of target_modules, or use another initialisation."
        )


def write_factors_(
    A: torch.Tensor, B: torch.Tensor, new_A: torch.Tensor, new_B: torch.Tensor, base_dtype: torch.dtype
) -> None:
    """Copy ``new_A`` / ``new_B`` into ``A`` / ``B``, rounded through the base weight's dtype as the reference
    stores an initialisation's factors (before any adapter autocast); a quantized base's storage dtype is not a
    rounding, so nothing is rounded there."""
    rounding = base_dtype if base_dtype.is_floating_point else new_A.dtype
    with torch.no_grad():
        A.copy_(new_A.to(rounding))
        B.copy_(new_B.to(rounding))
