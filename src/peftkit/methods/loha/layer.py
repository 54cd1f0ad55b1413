"""LoHa layers: ``delta W = s * (W1a @ W1b) * (W2a @ W2b)`` (Hadamard product), or, for a convolution with
``use_effective_conv2d``, the Hadamard product of two CP reconstructions
``einsum("i j k l, j r, i p -> p r k l", t, W_b, W_a)`` (FedPara's Proposition 3). ``s = alpha / r``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from peftkit.methods.lycoris.layer import LycorisLayer, LycorisLayerSpec, kaiming_, kernel_size, uses_cp_core


def cp_rebuild(core: torch.Tensor, w_a: torch.Tensor, w_b: torch.Tensor) -> torch.Tensor:
    """``(out, in, k1, k2)`` from a CP core ``(r, r, k1, k2)``, ``w_a (r, out)`` and ``w_b (r, in)``."""
    return torch.einsum("i j k l, j r, i p -> p r k l", core, w_b, w_a)


class HadamardProduct(torch.autograd.Function):
    """``s * (W1a @ W1b) * (W2a @ W2b)`` keeping only the four factors for backward (the two ``(out, in)``
    products are rebuilt there), so training holds no weight-sized temporaries per layer.

    Gradients, with ``G = s * grad``, ``P1 = W1a W1b``, ``P2 = W2a W2b``: ``dW1a = (G * P2) W1b^T``,
    ``dW1b = W1a^T (G * P2)``, and likewise for ``W2a``, ``W2b`` with ``P1``.
    """

    @staticmethod
    def forward(
        ctx: Any, w1a: torch.Tensor, w1b: torch.Tensor, w2a: torch.Tensor, w2b: torch.Tensor, scaling: float
    ) -> torch.Tensor:
        ctx.save_for_backward(w1a, w1b, w2a, w2b)
        ctx.scaling = scaling
        return (w1a @ w1b) * (w2a @ w2b) * scaling

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        w1a, w1b, w2a, w2b = ctx.saved_tensors
        grad = grad * ctx.scaling
        through_first = grad * (w2a @ w2b)
        through_second = grad * (w1a @ w1b)
        return (
            through_first @ w1b.T,
            w1a.T @ through_first,
            through_second @ w2b.T,
            w2a.T @ through_second,
            None,
        )


def hadamard_delta(factors: Mapping[str, torch.Tensor], scaling: float) -> torch.Tensor:
    """LoHa's ``delta W`` from its factors keyed by PEFT's names (``hada_w1_a``...; ``hada_t1/2`` with a CP core).

    Returns ``(out, in)`` (flat form) or ``(out, in, k1, k2)`` (CP form), scaled by ``scaling``.
    """
    if "hada_t1" in factors:
        first = cp_rebuild(factors["hada_t1"], factors["hada_w1_a"], factors["hada_w1_b"])
        second = cp_rebuild(factors["hada_t2"], factors["hada_w2_a"], factors["hada_w2_b"])
        return first * second * scaling
    w1a, w1b, w2a, w2b = (factors[n] for n in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"))
    if torch.is_grad_enabled() and any(t.requires_grad for t in (w1a, w1b, w2a, w2b)):
        return HadamardProduct.apply(w1a, w1b, w2a, w2b, scaling)
    return (w1a @ w1b) * (w2a @ w2b) * scaling


class LoHaLayer(LycorisLayer):
    """LoHa on ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` (state-dict names are PEFT's)."""

    repr_prefix: ClassVar[str] = "loha."

    adapter_layer_names: ClassVar[tuple[str, ...]] = (
        "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
    )  # fmt: skip

    def create_factors(self, spec: LycorisLayerSpec) -> dict[str, tuple[int, ...]]:
        r, out_dim, in_dim = spec.r, self.out_features, self.in_features
        kernel = kernel_size(self.get_base_layer())
        if uses_cp_core(self.get_base_layer(), spec):
            core = (r, r, *kernel, 1) if len(kernel) == 1 else (r, r, *kernel)  # Conv1d: a (k, 1) kernel
            return {
                "hada_w1_a": (r, out_dim), "hada_w1_b": (r, in_dim), "hada_t1": core,
                "hada_w2_a": (r, out_dim), "hada_w2_b": (r, in_dim), "hada_t2": core,
            }  # fmt: skip
        flat_in = in_dim * int(torch.Size(kernel).numel())
        return {
            "hada_w1_a": (out_dim, r),
            "hada_w1_b": (r, flat_in),
            "hada_w2_a": (out_dim, r),
            "hada_w2_b": (r, flat_in),
        }

    def init_factors(self, factors: Mapping[str, torch.Tensor], spec: LycorisLayerSpec) -> None:
        """All Kaiming-uniform; with ``init_weights=True`` ``hada_w2_b`` is zero, so ``delta W = 0``."""
        for tensor in factors.values():
            kaiming_(tensor)
        if spec.init_weights:
            factors["hada_w2_b"].zero_()

    def rebuild(self, factors: Mapping[str, torch.Tensor], scaling: float) -> torch.Tensor:
        return hadamard_delta(factors, scaling)

    def delta_output(self, x: torch.Tensor, adapter: str) -> torch.Tensor:
        """On a Linear, ``((W1a W1b) * (W2a W2b)) x`` through rank ``r**2`` factors when that is cheaper:
        ``(W1a W1b) * (W2a W2b) = L R`` with ``L[o, (k, l)] = W1a[o, k] W2a[o, l]`` ``(out, r**2)`` and
        ``R[(k, l), i] = W1b[k, i] W2b[l, i]`` ``(r**2, in)``, so ``T * r**2 * (in + out)`` multiply-adds for ``T``
        tokens instead of ``T * out * in``. Rank dropout (training) takes the general path."""
        r = self.r[adapter]
        cheaper = r * r * (self.in_features + self.out_features) < self.in_features * self.out_features
        f = self.factors(adapter)
        dropping = self.training and self.rank_dropout[adapter] > 0
        if not cheaper or dropping or "hada_t1" in f or not isinstance(self.get_base_layer(), nn.Linear):
            return super().delta_output(x, adapter)
        left = (f["hada_w1_a"][:, :, None] * f["hada_w2_a"][:, None, :]).flatten(1)  # (out, r*r)
        right = (f["hada_w1_b"][:, None, :] * f["hada_w2_b"][None, :, :]).flatten(0, 1)  # (r*r, in)
        flat = x.to(right.dtype).reshape(-1, x.shape[-1])  # 2-d products: no kernel choice by requires_grad
        return ((flat @ right.T) @ left.T * self.scaling[adapter]).reshape(*x.shape[:-1], left.shape[0])
