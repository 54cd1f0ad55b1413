"""Segmented gather-matmul for mixed LoRA batches (the SGMV idea of Punica, Chen et al. 2023, and S-LoRA,
Sheng et al. 2023), in plain ``torch`` operations that run the same on the CPU and on CUDA.

A mixed batch routes sample ``i`` to stack slot ``k_i`` (:mod:`~peftkit.methods.lora.stacked`:
``A_t (K + 1, in, R)``, ``B_t (K + 1, R, out)``, the scaling folded into ``B_t``, slot ``K`` all zero for the
base model) and adds ``x_i A_t[k_i] B_t[k_i]``. Gathering one ``(in, R)`` and one ``(R, out)`` matrix per
sample copies ``batch`` matrices per layer whatever the number of distinct adapters, which at decode (one
token per sample) costs more than the adapter arithmetic. Here samples are grouped instead:

* :func:`plan` (once per routing, on the host): the samples of each slot are cut into *segments* of at most
  ``L = ceil(routed / distinct)`` samples, so there are at most ``2 * distinct`` segments and at most
  ``2 * routed`` padded rows however unevenly the batch is split; samples on the base slot are skipped.
* :func:`add_segmented`: scatter the routed samples into a zero-padded ``(segments, L * tokens, in)`` block,
  gather one factor pair per *segment* (or take a view of the stack when the segments' slots are consecutive,
  as when every adapter appears once), two batched matmuls, and index-add each padded row back into its
  sample's output (padding rows are zero)::

      y_i += (x_pad[s] A_t[slot_s] B_t[slot_s])[row_i]      for each routed sample i in segment s

Factor reads drop from ``batch`` to ``segments`` copies (none when consecutive), for a copy of the input and
an index-add of the output: :func:`worth_it` weighs the two. The result is
:func:`~peftkit.methods.lora.stacked.add_routed`'s up to float summation order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SegmentPlan:
    """Where each routed sample goes in the padded block, and which stack slot each segment reads.

    Attributes:
        samples: ``(n,)`` long: the routed samples (positions in the batch, ascending), base-slot samples left out.
        rows: ``(n,)`` long: the padded row (``segment * length + offset``) of each of ``samples``.
        segment_slots: ``(segments,)`` long: the stack slot each segment multiplies by.
        length: ``L``, the rows per segment.
        first_slot: ``segment_slots[0]`` when the slots are consecutive (a view of the stack, no gather),
            else ``None``.
        every_sample: Whether every sample is routed (``samples`` is the whole batch: no input gather).
        row_samples: ``(segments * length,)`` long: the sample of each padded row (padding rows name the
            first routed sample: their output rows are zero, so adding them back changes nothing).
    """

    samples: torch.Tensor
    rows: torch.Tensor
    segment_slots: torch.Tensor
    length: int
    first_slot: int | None
    every_sample: bool
    row_samples: torch.Tensor

    @property
    def padded_rows(self) -> int:
        """Rows of the padded block (``segments * length``)."""
        return int(self.row_samples.shape[0])

    @property
    def gathered(self) -> int:
        """Factor pairs copied out of the stack (0 when the segments' slots are consecutive)."""
        return 0 if self.first_slot is not None else int(self.segment_slots.shape[0])

    def to(self, device: torch.device) -> SegmentPlan:
        """This plan with its index tensors on ``device``."""
        return SegmentPlan(
            self.samples.to(device),
            self.rows.to(device),
            self.segment_slots.to(device),
            self.length,
            self.first_slot,
            self.every_sample,
            self.row_samples.to(device),
        )


def plan(slots: Sequence[int], base_slot: int) -> SegmentPlan:
    """The segments of a batch whose sample ``i`` uses stack slot ``slots[i]`` (``base_slot``: no adapter).

    Segments follow slot order; within a slot, samples keep batch order. Pure host-side bookkeeping over
    ``len(slots)`` integers.
    """
    members: dict[int, list[int]] = {}
    for sample, slot in enumerate(slots):
        if slot != base_slot:
            members.setdefault(slot, []).append(sample)
    routed = sum(len(group) for group in members.values())
    length = max(1, math.ceil(routed / max(1, len(members))))
    samples: list[int] = []
    rows: list[int] = []
    segment_slots: list[int] = []
    for slot in sorted(members):
        group = members[slot]
        for start in range(0, len(group), length):
            chunk = group[start : start + length]
            base_row = len(segment_slots) * length
            samples.extend(chunk)
            rows.extend(range(base_row, base_row + len(chunk)))
            segment_slots.append(slot)
    row_samples = [samples[0] if samples else 0] * (len(segment_slots) * length)
    for sample, row in zip(samples, rows):
        row_samples[row] = sample
    order = sorted(range(len(samples)), key=samples.__getitem__)  # batch order: no input gather when all route
    samples, rows = [samples[j] for j in order], [rows[j] for j in order]
    consecutive = bool(segment_slots) and segment_slots == list(
        range(segment_slots[0], segment_slots[0] + len(segment_slots))
    )
    return SegmentPlan(
        samples=torch.tensor(samples, dtype=torch.long),
        rows=torch.tensor(rows, dtype=torch.long),
        segment_slots=torch.tensor(segment_slots, dtype=torch.long),
        length=length,
        first_slot=segment_slots[0] if consecutive else None,
        every_sample=samples == list(range(len(slots))),
        row_samples=torch.tensor(row_samples, dtype=torch.long),
    )


def worth_it(segments: SegmentPlan, batch: int, tokens: int, rank: int) -> bool:
    """Whether the segmented form moves less memory than gathering one factor pair per sample
    (:func:`~peftkit.methods.lora.stacked.add_routed`): it saves ``(batch - gathered) * R * (in + out)``
    copied elements and adds about ``padded_rows * tokens * (in + out)`` (the padded input and the index-add
    of the output), so it wins when tokens per sample are few (decode) and loses on long prompts."""
    return segments.padded_rows * tokens < (batch - segments.gathered) * rank


def _factors(A_t: torch.Tensor, B_t: torch.Tensor, segments: SegmentPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A_t, B_t)`` of each segment: a view when the slots are consecutive, else one gather each."""
    count = segments.segment_slots.shape[0]
    if segments.first_slot is not None:
        return A_t.narrow(0, segments.first_slot, count), B_t.narrow(0, segments.first_slot, count)
    return A_t.index_select(0, segments.segment_slots), B_t.index_select(0, segments.segment_slots)


def add_segmented(
    result: torch.Tensor, x: torch.Tensor, A_t: torch.Tensor, B_t: torch.Tensor, segments: SegmentPlan
) -> torch.Tensor:
    """``result_i + x_i A_t[k_i] B_t[k_i]`` for each routed sample ``i`` of ``segments`` (in place where possible).

    Shapes: ``x (batch, ..., in)``, ``result (batch, ..., out)``; ``A_t (K + 1, in, R)``, ``B_t (K + 1, R, out)``
    on ``x``'s device, as are ``segments``' tensors.
    """
    count = segments.segment_slots.shape[0]
    if count == 0:
        return result
    batch, width = x.shape[0], x.shape[-1]
    x3 = x.reshape(batch, -1, width).to(A_t.dtype)
    tokens = x3.shape[1]
    if segments.padded_rows == segments.samples.shape[0]:  # no padding: one gather builds the block
        padded = x3.index_select(0, segments.row_samples)
    else:
        routed = x3 if segments.every_sample else x3.index_select(0, segments.samples)
        padded = x3.new_zeros(segments.padded_rows, tokens, width).index_copy_(0, segments.rows, routed)
    A_seg, B_seg = _factors(A_t, B_t, segments)
    h = torch.bmm(padded.view(count, segments.length * tokens, width), A_seg)
    y = torch.bmm(h, B_seg).view(count * segments.length, tokens, B_t.shape[-1])
    if result.is_contiguous() and result.dtype == y.dtype and not torch.compiler.is_compiling():
        result.view(batch, tokens, result.shape[-1]).index_add_(0, segments.row_samples, y)
        return result
    flat = result.reshape(batch, tokens, result.shape[-1])
    return flat.index_add(0, segments.row_samples, y.to(result.dtype)).view(result.shape)
