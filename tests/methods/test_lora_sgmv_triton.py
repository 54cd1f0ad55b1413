"""The Triton SGMV kernels of mixed LoRA batches (``peftkit.methods.lora.sgmv_triton``) against the per-sample
formula ``y_i = r_i + x_i A_t[k_i] B_t[k_i]`` and the ``torch`` paths (``segments.add_segmented``,
``stacked.add_routed``) on fresh random inputs: uneven segments, base-model samples, sizes that are not
multiples of the tiles, ranks below and above 16, float32 and bfloat16.

Without a GPU the kernels run on CPU tensors in Triton's interpreter, which Triton picks when it is first
imported with ``TRITON_INTERPRET=1``: this module sets that variable before importing ``triton`` when no CUDA
device is present (it changes nothing else). The whole module skips when ``triton`` is not installed; the CUDA
tests skip without a device.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"
triton = pytest.importorskip("triton", reason="triton is not installed (pip install triton, or the test extra)")

from peftkit.methods.lora import segments, sgmv_triton, stacked  # noqa: E402  (after TRITON_INTERPRET)

BASE = 5  # adapters 0..4; slot 5 is the base model's all-zero slot
MIXES = {
    "all distinct": [3, 0, 2, 1, 4],
    "uneven, with base samples": [2, 2, 2, 2, 2, 2, 0, BASE, 4, BASE, 2],
    "only the base model": [BASE, BASE],
    "one adapter, a long segment": [1] * 19,
}
WIDTH, OUT = 70, 90  # not multiples of the 64-wide tiles
INTERPRETED = bool(triton.knobs.runtime.interpret)
on_cpu = pytest.mark.skipif(not INTERPRETED, reason="triton was imported without TRITON_INTERPRET=1 (no CPU run)")


def case(
    slots: list[int], tokens: int, rank: int, dtype: torch.dtype, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random ``result (n, tokens, OUT)``, ``x (n, tokens, WIDTH)``, ``A_t (6, WIDTH, rank)``, ``B_t (6, rank, OUT)``
    in ``dtype``, the base slot zero as ``stacked.stack_factors`` builds it."""
    gen = torch.Generator().manual_seed(seed)
    A_t = torch.randn(BASE + 1, WIDTH, rank, generator=gen) / WIDTH**0.5
    B_t = torch.randn(BASE + 1, rank, OUT, generator=gen) / rank**0.5
    A_t[BASE], B_t[BASE] = 0, 0
    x = torch.randn(len(slots), tokens, WIDTH, generator=gen)
    result = torch.randn(len(slots), tokens, OUT, generator=gen)
    return result.to(dtype), x.to(dtype), A_t.to(dtype), B_t.to(dtype)


def formula(
    result: torch.Tensor, x: torch.Tensor, A_t: torch.Tensor, B_t: torch.Tensor, slots: list[int]
) -> torch.Tensor:
    """The per-sample sum in float32."""
    f = [t.float() for t in (result, x, A_t, B_t)]
    return torch.stack([f[0][i] + f[1][i] @ f[2][k] @ f[3][k] for i, k in enumerate(slots)])


def assert_agrees(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, roundings: int = 2) -> None:
    """float32: the default tolerances; bfloat16: within ``roundings`` bfloat16 roundings (2^-8 relative each)
    of the largest output. The kernel rounds once (its output); the ``torch`` paths also round ``x A`` and the
    product before the sum, so against them allow 4."""
    if dtype == torch.float32:
        torch.testing.assert_close(got, want)
    else:
        assert (got.float() - want.float()).abs().max() <= roundings * 2**-8 * want.float().abs().max()


@on_cpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rank", [3, 20])
@pytest.mark.parametrize("tokens", [1, 5])
@pytest.mark.parametrize("mix", sorted(MIXES))
def test_sgmv_equals_formula_and_torch_paths(mix: str, tokens: int, rank: int, dtype: torch.dtype) -> None:
    slots = MIXES[mix]
    result, x, A_t, B_t = case(slots, tokens, rank, dtype, seed=len(slots) * 7 + tokens + rank)
    got = sgmv_triton.add_sgmv(result.clone(), x, A_t, B_t, sgmv_triton.plan(slots, BASE))
    assert got.dtype == dtype
    assert_agrees(got, formula(result, x, A_t, B_t, slots), dtype)
    segmented = segments.add_segmented(result.clone(), x, A_t, B_t, segments.plan(slots, BASE))
    assert_agrees(got, segmented, dtype, roundings=4)
    assert_agrees(got, stacked.add_routed(result.clone(), x, A_t, B_t, torch.tensor(slots)), dtype, roundings=4)


@on_cpu
def test_sgmv_writes_a_non_contiguous_result_and_a_wider_output_dtype() -> None:
    slots = MIXES["uneven, with base samples"]
    result, x, A_t, B_t = case(slots, 3, 8, torch.bfloat16, seed=11)
    wide = result.float().transpose(0, 1).contiguous().transpose(0, 1)  # float32, not contiguous
    got = sgmv_triton.add_sgmv(wide, x, A_t, B_t, sgmv_triton.plan(slots, BASE))
    assert got is wide
    torch.testing.assert_close(got, formula(result, x, A_t, B_t, slots), rtol=1e-5, atol=1e-5)


def test_plan_groups_samples_by_slot_and_leaves_out_the_base_model() -> None:
    segments_of = sgmv_triton.plan(MIXES["uneven, with base samples"], BASE)
    assert segments_of.segment_slots.tolist() == [0, 2, 4]
    assert segments_of.starts.tolist() == [0, 1, 8, 9]
    assert segments_of.order.tolist() == [6, 0, 1, 2, 3, 4, 5, 10, 8]
    assert segments_of.longest == 7
    assert sgmv_triton.plan(MIXES["only the base model"], BASE).segment_slots.numel() == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mix", sorted(MIXES))
def test_sgmv_on_cuda_equals_torch_path(mix: str, dtype: torch.dtype) -> None:
    slots = MIXES[mix]
    result, x, A_t, B_t = (t.cuda() for t in case(slots, 4, 16, dtype, seed=3))
    want = segments.add_segmented(result.clone(), x, A_t, B_t, segments.plan(slots, BASE).to(x.device))
    got = sgmv_triton.add_sgmv(result.clone(), x, A_t, B_t, sgmv_triton.plan(slots, BASE).to(x.device))
    assert_agrees(got.cpu(), want.cpu(), dtype, roundings=4)
    assert_agrees(got.cpu(), formula(*(t.cpu() for t in (result, x, A_t, B_t)), slots), dtype)
