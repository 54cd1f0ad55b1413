"""LoKr layers: ``delta W = s * kron(W1, W2)`` with ``s = alpha / r``.

``W1`` is ``lokr_w1`` or ``lokr_w1_a @ lokr_w1_b``; ``W2`` is ``lokr_w2``, ``lokr_w2_a @ lokr_w2_b``, or (a
convolution with ``use_effective_conv2d``) the CP reconstruction ``einsum("i j k l, i p, j r -> p r k l",
lokr_t2, lokr_w2_a, lokr_w2_b)``. When ``W2`` is 4-d, ``W1`` gets two trailing unit axes, so the product is
``(out, in, k1, k2)``; otherwise ``torch.kron``'s own rule applies (the 2-d product's columns are reshaped into
``in x kernel``). On a Conv1d with a full ``lokr_w2 (b, d, k)`` that rule pads ``W1`` with a leading unit axis,
as the reference does; kept so that adapters trained there give the same outputs here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import nn

from peftkit.methods.lycoris.layer import LycorisLayer, LycorisLayerSpec, kaiming_, kernel_size, uses_cp_core


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """Split ``dimension`` into ``(m, n)`` with ``m * n == dimension`` (the LyCORIS rule).

    With ``factor > 0`` dividing ``dimension``: ``(factor, dimension // factor)``. Otherwise walk the divisors
    ``m`` of ``dimension`` upwards (each at most ``factor`` when ``factor > 0``), stopping at the first with
    ``m >= dimension // m``; the last pair reached is returned smaller factor first. E.g. ``128 -> (8, 16)``,
    ``127 -> (1, 127)``, ``(128, 4) -> (4, 32)``.
    """
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    limit = dimension if factor == -1 else factor
    m, n = 1, dimension
    candidate = 2
    while m < n and candidate <= min(limit, dimension):
        if dimension % candidate == 0:
            m, n = candidate, dimension // candidate
        candidate += 1
    return min(m, n), max(m, n)


def kronecker_delta(factors: Mapping[str, torch.Tensor], scaling: float) -> torch.Tensor:
    """LoKr's ``delta W`` from its factors keyed by PEFT's names (``lokr_w1`` or ``lokr_w1_a/b``; ``lokr_w2``,
    ``lokr_w2_a/b`` or ``lokr_t2`` with ``lokr_w2_a/b``), scaled by ``scaling``."""
    w1 = factors["lokr_w1"] if "lokr_w1" in factors else factors["lokr_w1_a"] @ factors["lokr_w1_b"]
    if "lokr_w2" in factors:
        w2 = factors["lokr_w2"]
    elif "lokr_t2" in factors:
        w2 = torch.einsum(
            "i j k l, i p, j r -> p r k l", factors["lokr_t2"], factors["lokr_w2_a"], factors["lokr_w2_b"]
        )
        # einsum may give a size-1 axis an odd stride, which torch.kron cannot view (the reference fails there on
        # a Conv1d core); a dense copy of this small factor avoids it
        w2 = w2.clone(memory_format=torch.contiguous_format)
    else:
        w2 = factors["lokr_w2_a"] @ factors["lokr_w2_b"]
    if w2.dim() == 4:
        w1 = w1[:, :, None, None]
    return torch.kron(w1, w2.contiguous()) * scaling


class LoKrLayer(LycorisLayer):
    """LoKr on ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` (state-dict names are PEFT's)."""

    repr_prefix: ClassVar[str] = "lokr."

    adapter_layer_names: ClassVar[tuple[str, ...]] = (
        "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2",
    )  # fmt: skip

    def create_factors(self, spec: LycorisLayerSpec) -> dict[str, tuple[int, ...]]:
        r = spec.r
        out_a, out_b = factorization(self.out_features, spec.decompose_factor)
        in_c, in_d = factorization(self.in_features, spec.decompose_factor)
        kernel = kernel_size(self.get_base_layer())
        shapes: dict[str, tuple[int, ...]]
        if spec.decompose_both and r < max(out_a, in_c) / 2:
            shapes = {"lokr_w1_a": (out_a, r), "lokr_w1_b": (r, in_c)}
        else:
            shapes = {"lokr_w1": (out_a, in_c)}
        if r >= max(out_b, in_d) / 2:
            shapes["lokr_w2"] = (out_b, in_d, *kernel)
        elif uses_cp_core(self.get_base_layer(), spec):
            core = (r, r, *kernel, 1) if len(kernel) == 1 else (r, r, *kernel)  # Conv1d: a (k, 1) kernel
            shapes.update(lokr_w2_a=(r, out_b), lokr_w2_b=(r, in_d), lokr_t2=core)
        else:
            shapes.update(lokr_w2_a=(out_b, r), lokr_w2_b=(r, in_d * int(torch.Size(kernel).numel())))
        return shapes

    def init_factors(self, factors: Mapping[str, torch.Tensor], spec: LycorisLayerSpec) -> None:
        """All Kaiming-uniform, then ``init_weights=True`` zeroes ``W1`` (``lokr_w1`` or ``lokr_w1_a``) and
        ``"lycoris"`` zeroes ``W2`` (``lokr_w2`` or ``lokr_w2_b``); either makes ``delta W = 0``."""
        for tensor in factors.values():
            kaiming_(tensor)
        if spec.init_weights == "lycoris":
            factors["lokr_w2" if "lokr_w2" in factors else "lokr_w2_b"].zero_()
        elif spec.init_weights:
            factors["lokr_w1" if "lokr_w1" in factors else "lokr_w1_a"].zero_()

    def rebuild(self, factors: Mapping[str, torch.Tensor], scaling: float) -> torch.Tensor:
        return kronecker_delta(factors, scaling)

    def delta_output(self, x: torch.Tensor, adapter: str) -> torch.Tensor:
        """On a Linear, ``kron(W1, W2) x`` without building the ``(out, in)`` matrix: with ``x`` viewed as
        ``X (..., c, d)``, ``s * W1 X W2^T`` is ``(..., a, b)``, i.e. ``(..., out)``: ``T * (a * in + out * d)``
        multiply-adds for ``T`` tokens instead of ``T * out * in``. Rank dropout (training) takes the general path."""
        if not isinstance(self.get_base_layer(), nn.Linear) or (self.training and self.rank_dropout[adapter] > 0):
            return super().delta_output(x, adapter)
        f = self.factors(adapter)
        w1 = f["lokr_w1"] if "lokr_w1" in f else f["lokr_w1_a"] @ f["lokr_w1_b"]
        w2 = f["lokr_w2"] if "lokr_w2" in f else f["lokr_w2_a"] @ f["lokr_w2_b"]
        (a, c), (b, d) = w1.shape, w2.shape
        # plain 2-d products only: a batched matmul may pick its kernel by requires_grad (last-bit differences)
        tokens = x.to(w1.dtype).reshape(-1, d)  # (N * c, d)
        right = (tokens @ w2.T).reshape(-1, c, b).transpose(1, 2).reshape(-1, c)  # X W2^T as (N * b, c)
        out = (right @ w1.T).reshape(-1, b, a).transpose(1, 2)  # W1 X W2^T: (N, a, b)
        return out.reshape(*x.shape[:-1], a * b) * self.scaling[adapter]
