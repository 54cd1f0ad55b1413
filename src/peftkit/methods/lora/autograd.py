"""A fused LoRA linear layer whose backward regenerates the dropout mask instead of saving a dropped copy.

With ``x (T, in)``, base weight ``W (out, in)`` and bias ``b (out,)``, factors ``A (r, in)``, ``B (out, r)``,
scaling ``s`` and dropout probability ``p``:

Forward::

    M ~ Bernoulli(1 - p)  (elementwise, shape of x; drawn from a generator seeded with a per-call seed)
    c = 1 / (1 - p)
    h = c (x ⊙ M) Aᵀ                      (T, r)     (h = x Aᵀ when p = 0)
    y = x Wᵀ + b + s h Bᵀ                 (T, out)   (one GEMM accumulating into the base output)

Backward, with ``g = ∂L/∂y (T, out)``::

    ∂L/∂h = s g B                         (T, r)
    ∂L/∂B = s gᵀ h                        (out, r)
    ∂L/∂A = c (∂L/∂h)ᵀ (x ⊙ M)            (r, in)
    ∂L/∂x = g W + c ((∂L/∂h) A) ⊙ M       (T, in)
    ∂L/∂W = gᵀ x,  ∂L/∂b = Σ_t g_t        (only if the base is trainable)

Plain autograd on ``base(x) + s · B(A(dropout(x)))`` saves, per layer, the dropped copy ``x ⊙ M / (1-p)``
(``T * in`` floats) and the mask (``T * in`` bytes). Here only ``x`` (the layer's input, which the
surrounding network usually keeps anyway, so its storage is shared), ``h`` (``r`` columns) and an integer
seed are saved; ``M`` is drawn again in backward from the same seed, except where only its dropped positions
were drawn (below): those (``p * numel`` int64) are kept instead, which costs less than drawing them again.

The mask costs random numbers, the dominant price of dropout on a CPU. Where few elements are dropped
(``p <= 0.2`` on the CPU) only the dropped positions are drawn, as geometric gaps between drops
(``gap = floor(log(1 - u) / log(1 - p))``, ``u`` uniform, from NumPy's SFC64 generator seeded with the call's
seed): about ``p`` random numbers per element instead of one, exactly i.i.d. Bernoulli(p). Otherwise (or on
an accelerator, where random numbers are cheap) each element gets a 32-bit uniform integer ``w`` and is
dropped iff ``w < round(p 2^32)``. The per-call seed is drawn
from the default CPU generator, so ``torch.manual_seed`` makes training reproducible.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from peftkit.quant.base import dense_tensor

#: Up to this drop probability a CPU draws only the dropped positions (fewer random numbers).
SPARSE_MAX_P = 0.2
#: Keep those positions for backward instead of drawing them again (evaluated: see the README).
KEEP_POSITIONS = True
_local = threading.local()


def _generator(device: torch.device) -> torch.Generator:
    """A generator for ``device``, one per thread (so concurrent layers never share a seeded state)."""
    cache: dict[torch.device, torch.Generator] = _local.__dict__.setdefault("generators", {})
    gen = cache.get(device)
    if gen is None:
        gen = cache[device] = torch.Generator(device=device)
    return gen


def new_seed() -> int:
    """A non-negative seed for one call, drawn from (and advancing) the default CPU generator."""
    return int(torch.empty((), dtype=torch.int64).random_())


def dropped_positions(numel: int, p: float, seed: int) -> torch.Tensor:
    """Sorted flat indices ``< numel`` of i.i.d. Bernoulli(p) drops, drawn as geometric gaps (CPU).

    NumPy's SFC64 generator draws the gaps: a few times cheaper per random number than torch's CPU generator,
    and with less fixed cost per call, which matters at one call per layer and step.
    """
    rng = np.random.Generator(np.random.SFC64(seed))
    log_keep, last, chunks = math.log1p(-p), -1.0, []
    while last < numel:
        steps = rng.random(int(numel * p + 8 * math.sqrt(numel * p * (1 - p)) + 16))
        np.negative(steps, out=steps)
        np.log1p(steps, out=steps)
        steps /= log_keep
        np.floor(steps, out=steps)
        steps += 1
        np.cumsum(steps, out=steps)
        steps += last
        chunks.append(steps)
        last = float(steps[-1])
    positions = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
    return torch.from_numpy(positions[: np.searchsorted(positions, numel)].astype(np.int64))


class DropMask:
    """Which elements of a ``like``-shaped tensor dropout zeroes, fully determined by ``(p, seed)``."""

    @classmethod
    def of_positions(cls, positions: torch.Tensor) -> DropMask:
        """The mask whose dropped flat indices are ``positions`` (kept from the forward: nothing drawn)."""
        mask = cls.__new__(cls)
        mask.positions, mask.mask = positions, None
        return mask

    def __init__(self, like: torch.Tensor, p: float, seed: int) -> None:
        self.positions: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None
        if like.device.type == "cpu" and p <= SPARSE_MAX_P:
            self.positions = dropped_positions(like.numel(), p, seed)
        else:
            gen = _generator(like.device)
            gen.manual_seed(seed)
            words = -(-like.numel() // 2)
            bits = torch.empty(words, dtype=torch.int64, device=like.device).random_(-(2**63), None, generator=gen)
            threshold = round(p * 2**32) - 2**31
            self.mask = (bits.view(torch.int32)[: like.numel()] < threshold).view(like.shape)

    def zero_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Zero the dropped elements of contiguous ``tensor`` (shaped like the mask) in place; returns it."""
        if self.positions is not None:
            tensor.view(-1).index_fill_(0, self.positions, 0)
        else:
            tensor.masked_fill_(self.mask, 0)  # type: ignore[arg-type]  # the mask is a bool tensor; torch's stub wants a Tensor
        return tensor

    def dropped_copy(self, tensor: torch.Tensor) -> torch.Tensor:
        """A contiguous copy of ``tensor`` with the dropped elements zeroed (not yet rescaled), in the scratch
        buffer (see :func:`scratch`): valid until the next call."""
        return self.zero_(scratch(tensor).copy_(tensor))


#: Largest scratch buffer kept between calls (elements); bigger ones are allocated each time.
SCRATCH_MAX_NUMEL = 1 << 23


def scratch(like: torch.Tensor) -> torch.Tensor:
    """A reusable contiguous tensor shaped like ``like`` (CPU), for transient products of the dropout path.

    A fresh multi-megabyte temporary per layer and step is a fresh ``mmap`` on the CPU, and faulting its pages
    in costs as much as filling it; one buffer per thread, grown to the largest size seen, avoids that. Each
    use is finished before the next one starts (forward and backward of one layer run to completion).
    """
    if like.device.type != "cpu" or like.numel() > SCRATCH_MAX_NUMEL:
        return torch.empty(like.shape, dtype=like.dtype, device=like.device)
    cache: dict[torch.dtype, torch.Tensor] = _local.__dict__.setdefault("scratch", {})
    buffer = cache.get(like.dtype)
    if buffer is None or buffer.numel() < like.numel():
        buffer = cache[like.dtype] = torch.empty(like.numel(), dtype=like.dtype)
    return buffer[: like.numel()].view(like.shape)


def lora_linear_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scaling: float | torch.Tensor,
    p: float = 0.0,
    seed: int = 0,
    mask: DropMask | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, h)`` of the forward in the module doc, without autograd bookkeeping.

    Shapes: ``x (..., in)``, ``weight (out, in)``, ``lora_A (r, in)``, ``lora_B (out, r)`` -> ``y (..., out)``,
    ``h (T, r)`` with ``T`` the number of rows of ``x``. A tensor ``scaling`` (hot-swap) is applied to ``h``.
    ``mask``: the drop mask of ``(p, seed)`` when the caller drew it already.
    """
    flat = x.reshape(-1, x.shape[-1])
    out = F.linear(flat, weight, bias)
    if p > 0:
        mask = DropMask(flat, p, seed) if mask is None else mask
        h = F.linear(mask.dropped_copy(flat), lora_A).mul_(1 / (1 - p))
    else:
        h = F.linear(flat, lora_A)
    if torch.is_tensor(scaling):
        out.addmm_(h * scaling, lora_B.t())
    else:
        out.addmm_(h, lora_B.t(), alpha=scaling)
    return out.view(*x.shape[:-1], out.shape[-1]), h


class LoraLinearFunction(torch.autograd.Function):
    """``y = x Wᵀ + b + s · dropout_p(x) Aᵀ Bᵀ`` with the mask regenerated in backward (see module doc)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        lora_A: torch.Tensor,
        lora_B: torch.Tensor,
        scaling: float,
        p: float,
        seed: int,
    ) -> torch.Tensor:
        mask = DropMask(x.reshape(-1, x.shape[-1]), p, seed) if p > 0 else None
        out, h = lora_linear_forward(x, weight, bias, lora_A, lora_B, scaling, p, seed, mask)
        # The dropped positions (about p * 8 bytes per input element) are kept rather than drawn again.
        kept = mask.positions if mask is not None and KEEP_POSITIONS else None
        ctx.save_for_backward(x, weight, lora_A, lora_B, h, kept)
        ctx.scaling, ctx.p, ctx.seed = scaling, p, seed
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, lora_A, lora_B, h, kept = ctx.saved_tensors
        need_x, need_w, need_b, need_a, need_bb = ctx.needs_input_grad[:5]
        flat, g = x.reshape(-1, x.shape[-1]), grad.reshape(-1, grad.shape[-1])
        s, p = ctx.scaling, ctx.p
        grad_h = (g @ lora_B).mul_(s)
        mask = None
        if p > 0 and (need_x or need_a):
            mask = DropMask.of_positions(kept) if kept is not None else DropMask(flat, p, ctx.seed)
        grad_x = grad_w = grad_b = grad_a = grad_bb = None
        if need_a:
            if mask is None:
                grad_a = grad_h.t() @ flat
            else:
                grad_a = (grad_h.t() @ mask.dropped_copy(flat)).mul_(1 / (1 - p))
        if need_x:
            grad_x = g @ dense_tensor(weight)  # a quantized weight (torchao) is dequantized on the fly
            if mask is None:
                grad_x.addmm_(grad_h, lora_A)
            else:  # the scratch buffer is free again: dA is done with the dropped copy
                grad_x.add_(mask.zero_(torch.mm(grad_h, lora_A, out=scratch(flat))), alpha=1 / (1 - p))
            grad_x = grad_x.view(x.shape)
        if need_bb:
            grad_bb = g.t() @ (h * s)
        if need_w:
            grad_w = g.t() @ flat
        if need_b:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b, grad_a, grad_bb, None, None, None


def lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scaling: float | torch.Tensor,
    p: float = 0.0,
) -> torch.Tensor:
    """``x Wᵀ + b + s · dropout_p(x) Aᵀ Bᵀ``: through :class:`LoraLinearFunction` when anything needs a
    gradient (``scaling`` must then be a number), else computed directly."""
    seed = new_seed() if p > 0 else 0
    if torch.is_grad_enabled() and (
        x.requires_grad or lora_A.requires_grad or lora_B.requires_grad or weight.requires_grad
    ):
        return LoraLinearFunction.apply(x, weight, bias, lora_A, lora_B, scaling, p, seed)
    return lora_linear_forward(x, weight, bias, lora_A, lora_B, scaling, p, seed)[0]
