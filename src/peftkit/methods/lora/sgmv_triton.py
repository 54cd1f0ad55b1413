"""Segmented gather-matmul (SGMV) for mixed LoRA batches as two Triton kernels, after Punica (Chen et al., 2023,
"Punica: Multi-Tenant LoRA Serving") and S-LoRA (Sheng et al., 2023).

This module imports ``triton`` (an optional dependency): import it only where Triton is wanted
(:func:`peftkit.methods.lora.fast_paths.triton_available`). It computes what
:func:`~peftkit.methods.lora.segments.add_segmented` computes in ``torch`` operations, without the padded copy
of the input, the gathered factors or the index-add: samples are grouped by stack slot into *segments*
(:func:`plan`, once per routing on the host) and each segment multiplies its own slot's factors in place::

    shrink:  h[row]  = x[row] A_t[slot_s]            (rows of segment s; h (batch * tokens, R) in float32)
    expand:  y[row] += h[row] B_t[slot_s]            (in place, rounded once to y's dtype)

Shapes: ``x (batch, ..., in)``, ``y (batch, ..., out)``, ``A_t (K + 1, in, R)``, ``B_t (K + 1, R, out)`` (the
scaling folded into ``B_t``; slot ``K`` is the base model, whose samples are left out of every segment). The
products accumulate in float32; the factors are multiplied as float32 (exact for bfloat16 / float16 inputs,
which float32 and TF32 represent exactly; float32 inputs use IEEE products unless torch allows TF32). The kernels
run compiled on CUDA tensors, or on CPU tensors in Triton's interpreter when ``TRITON_INTERPRET=1`` was set
before ``triton`` was first imported (how the tests check them without a GPU: slow, exact).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl

#: Rows of a tile (``tl.dot`` needs at least 16 in every dimension), input columns per step, output columns.
BLOCK_M, BLOCK_K, BLOCK_N = 16, 64, 64


@dataclass(frozen=True)
class SgmvPlan:
    """The segments of a mixed batch: one per distinct stack slot, base-model samples left out.

    Attributes:
        order: ``(n,)`` long: the routed samples, grouped by slot (ascending), batch order within a slot.
        starts: ``(segments + 1,)`` long: segment ``s`` is ``order[starts[s]:starts[s + 1]]``.
        segment_slots: ``(segments,)`` long: the stack slot of each segment.
        longest: Samples in the longest segment (sizes the launch grid).
    """

    order: torch.Tensor
    starts: torch.Tensor
    segment_slots: torch.Tensor
    longest: int

    def to(self, device: torch.device) -> SgmvPlan:
        """This plan with its index tensors on ``device``."""
        return SgmvPlan(self.order.to(device), self.starts.to(device), self.segment_slots.to(device), self.longest)


def plan(slots: Sequence[int], base_slot: int) -> SgmvPlan:
    """The segments of a batch whose sample ``i`` uses stack slot ``slots[i]`` (``base_slot``: no adapter)."""
    members: dict[int, list[int]] = {}
    for sample, slot in enumerate(slots):
        if slot != base_slot:
            members.setdefault(slot, []).append(sample)
    groups = [members[slot] for slot in sorted(members)]
    starts = [0]
    for group in groups:
        starts.append(starts[-1] + len(group))
    return SgmvPlan(
        order=torch.tensor([sample for group in groups for sample in group], dtype=torch.long),
        starts=torch.tensor(starts, dtype=torch.long),
        segment_slots=torch.tensor(sorted(members), dtype=torch.long),
        longest=max((len(group) for group in groups), default=0),
    )


@triton.jit
def _tile_rows(order_ptr: Any, starts_ptr: Any, slots_ptr: Any, tokens: Any, BLOCK_M: tl.constexpr) -> Any:
    """This program's tile of its segment (program ids: segment, row tile): the flat rows
    ``sample * tokens + token``, which of them are real, whether any is (``1``/``0``: a tile past the segment's
    end reads no factors), and the segment's stack slot."""
    segment = tl.program_id(0)
    start, stop, slot = tl.load(starts_ptr + segment), tl.load(starts_ptr + segment + 1), tl.load(slots_ptr + segment)
    local = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    valid = local < (stop - start) * tokens
    rows = tl.load(order_ptr + start + local // tokens, mask=valid, other=0) * tokens + local % tokens
    live = (tl.program_id(1) * BLOCK_M < (stop - start) * tokens).to(tl.int32)
    return rows, valid, live, slot


@triton.jit
def _shrink(
    x_ptr: Any, a_ptr: Any, h_ptr: Any, order_ptr: Any, starts_ptr: Any, slots_ptr: Any,
    tokens: Any, width: Any, rank: Any, stride_x: Any, stride_as: Any, stride_ak: Any,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, PRECISION: tl.constexpr,
) -> None:  # fmt: skip
    """``h[row] = x[row] A_t[slot]`` for one tile of rows of one segment (grid: segments x row tiles)."""
    rows, valid, live, slot = _tile_rows(order_ptr, starts_ptr, slots_ptr, tokens, BLOCK_M)
    r = tl.arange(0, BLOCK_R)
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k0 in range(0, width, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        x_mask = valid[:, None] & (k[None, :] < width)
        x_tile = tl.load(x_ptr + rows[:, None] * stride_x + k[None, :], mask=x_mask, other=0.0)
        a_mask = (k[:, None] < width * live) & (r[None, :] < rank)
        a_tile = tl.load(a_ptr + slot * stride_as + k[:, None] * stride_ak + r[None, :], mask=a_mask, other=0.0)
        acc += tl.dot(x_tile.to(tl.float32), a_tile.to(tl.float32), input_precision=PRECISION)
    tl.store(h_ptr + rows[:, None] * BLOCK_R + r[None, :], acc, mask=valid[:, None])


@triton.jit
def _expand(
    h_ptr: Any, b_ptr: Any, y_ptr: Any, order_ptr: Any, starts_ptr: Any, slots_ptr: Any,
    tokens: Any, width: Any, rank: Any, stride_y: Any, stride_bs: Any, stride_br: Any,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, PRECISION: tl.constexpr,
) -> None:  # fmt: skip
    """``y[row] += h[row] B_t[slot]`` for one tile of rows and columns (grid: segments x row tiles x column tiles)."""
    rows, valid, live, slot = _tile_rows(order_ptr, starts_ptr, slots_ptr, tokens, BLOCK_M)
    r = tl.arange(0, BLOCK_R)
    n = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    h_tile = tl.load(h_ptr + rows[:, None] * BLOCK_R + r[None, :], mask=valid[:, None], other=0.0)
    b_mask = (r[:, None] < rank) & (n[None, :] < width * live)
    b_tile = tl.load(b_ptr + slot * stride_bs + r[:, None] * stride_br + n[None, :], mask=b_mask, other=0.0)
    out = tl.dot(h_tile, b_tile.to(tl.float32), input_precision=PRECISION)
    y_mask = valid[:, None] & (n[None, :] < width)
    y_at = y_ptr + rows[:, None] * stride_y + n[None, :]
    old = tl.load(y_at, mask=y_mask, other=0.0)
    tl.store(y_at, (old.to(tl.float32) + out).to(y_ptr.dtype.element_ty), mask=y_mask)


def _precision(dtype: torch.dtype) -> str:
    """TF32 products are exact for 16-bit inputs; float32 inputs get them only where torch allows TF32."""
    return "tf32" if dtype != torch.float32 or torch.backends.cuda.matmul.allow_tf32 else "ieee"


def add_sgmv(
    result: torch.Tensor, x: torch.Tensor, A_t: torch.Tensor, B_t: torch.Tensor, segments: SgmvPlan
) -> torch.Tensor:
    """``result_i + x_i A_t[k_i] B_t[k_i]`` for each routed sample ``i`` of ``segments`` (in place when
    ``result`` is contiguous). All tensors on one device, ``segments``' included."""
    count = int(segments.segment_slots.shape[0])
    if count == 0:
        return result
    batch, width, out, rank = x.shape[0], x.shape[-1], B_t.shape[-1], A_t.shape[-1]
    x2 = x.reshape(batch, -1, width)
    tokens = x2.shape[1]
    x2 = x2.reshape(batch * tokens, width).contiguous()
    y = result if result.is_contiguous() else result.contiguous()
    y2 = y.view(batch * tokens, out)
    A_c, B_c = A_t.contiguous(), B_t.contiguous()
    block_r = max(16, triton.next_power_of_2(rank))
    h = torch.empty(batch * tokens, block_r, dtype=torch.float32, device=x.device)
    precision = _precision(A_t.dtype)
    tiles = triton.cdiv(segments.longest * tokens, BLOCK_M)
    common = (segments.order, segments.starts, segments.segment_slots, tokens)
    _shrink[(count, tiles)](
        x2, A_c, h, *common, width, rank, x2.stride(0), A_c.stride(0), A_c.stride(1),
        BLOCK_M=BLOCK_M, BLOCK_K=BLOCK_K, BLOCK_R=block_r, PRECISION=precision,
    )  # fmt: skip
    _expand[(count, tiles, triton.cdiv(out, BLOCK_N))](
        h, B_c, y2, *common, out, rank, y2.stride(0), B_c.stride(0), B_c.stride(1),
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_R=block_r, PRECISION=precision,
    )  # fmt: skip
    if y is not result:
        result.copy_(y)
    return result
