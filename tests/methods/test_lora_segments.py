"""The segmented gather-matmul of mixed LoRA batches (``peftkit.methods.lora.segments``) against the per-sample
formula ``y_i = r_i + x_i A_t[k_i] B_t[k_i]`` and against the per-sample gather path (``stacked.add_routed``),
on the CPU; on CUDA (skipped without one) the same computation on the device against the CPU path, and a
decode-shaped mixed batch of a model against each sample run alone."""

from __future__ import annotations

import pytest
import torch
from tests.methods.test_lora_stacked import model_with_adapters

from peftkit.methods.lora import segments, stacked

SLOTS = 5  # adapters 0..4; slot 5 is the base model's all-zero slot
MIXES = {
    "all distinct, consecutive": [3, 0, 2, 1, 4],
    "uneven, with base samples": [2, 2, 2, 2, 2, 2, 0, SLOTS, 4, SLOTS, 2],
    "one adapter": [1, 1, 1, 1],
    "gaps between slots": [4, 0, 4, 0, 2],
    "only the base model": [SLOTS, SLOTS],
    "equal groups, with base samples": [1, SLOTS, 3, 1, 3],
}


def stacks(device: str = "cpu", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``A_t (6, 7, 3)``, ``B_t (6, 3, 4)`` with the base slot (the last) zero, as stacked.py builds."""
    gen = torch.Generator().manual_seed(seed)
    A_t, B_t = torch.randn(SLOTS + 1, 7, 3, generator=gen), torch.randn(SLOTS + 1, 3, 4, generator=gen)
    A_t[SLOTS], B_t[SLOTS] = 0, 0
    return A_t.to(device), B_t.to(device)


def formula(
    result: torch.Tensor, x: torch.Tensor, A_t: torch.Tensor, B_t: torch.Tensor, slots: list[int]
) -> torch.Tensor:
    return torch.stack([result[i] + x[i] @ A_t[k] @ B_t[k] for i, k in enumerate(slots)])


@pytest.mark.parametrize("mix", sorted(MIXES))
@pytest.mark.parametrize("tokens", [1, 3])
def test_segmented_equals_per_sample_formula_and_gather_path(mix: str, tokens: int) -> None:
    slots = MIXES[mix]
    A_t, B_t = stacks()
    gen = torch.Generator().manual_seed(len(slots) + tokens)
    x, result = torch.randn(len(slots), tokens, 7, generator=gen), torch.randn(len(slots), tokens, 4, generator=gen)
    want = formula(result, x, A_t, B_t, slots)
    gathered = stacked.add_routed(result.clone(), x, A_t, B_t, torch.tensor(slots))
    got = segments.add_segmented(result.clone(), x, A_t, B_t, segments.plan(slots, SLOTS))
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got, gathered)


def test_plan_bounds_segments_and_padding_and_views_consecutive_slots() -> None:
    uneven = segments.plan(MIXES["uneven, with base samples"], SLOTS)
    routed = 9  # the samples not on the base slot
    distinct = 3
    assert sorted(uneven.samples.tolist()) == [
        i for i, k in enumerate(MIXES["uneven, with base samples"]) if k != SLOTS
    ]
    assert uneven.length == 3 and uneven.segment_slots.tolist() == [0, 2, 2, 2, 4]
    assert uneven.segment_slots.shape[0] <= 2 * distinct and uneven.padded_rows <= 2 * routed
    assert len(set(uneven.rows.tolist())) == routed and uneven.first_slot is None and not uneven.every_sample
    consecutive = segments.plan(MIXES["all distinct, consecutive"], SLOTS)
    assert consecutive.first_slot == 0 and consecutive.gathered == 0 and consecutive.every_sample
    assert segments.plan(MIXES["only the base model"], SLOTS).segment_slots.numel() == 0


def test_segments_chosen_for_decode_and_gather_for_long_prompts() -> None:
    plan = segments.plan(list(range(32)), 32)  # 32 distinct adapters, a view of the stack
    assert segments.worth_it(plan, batch=32, tokens=1, rank=16)
    assert not segments.worth_it(plan, batch=32, tokens=64, rank=16)


def test_decode_shaped_mixed_batch_equals_each_sample_alone() -> None:
    model = model_with_adapters()
    names = ["c", "default", "__base__", "b", "c", "c"]
    ids = torch.randint(0, 64, (len(names), 1), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        mixed = model(input_ids=ids, adapter_names=names).logits
        for i, name in enumerate(names):
            if name == "__base__":
                with model.disable_adapter():
                    alone = model(input_ids=ids[i : i + 1]).logits
            else:
                model.set_adapter(name, inference_mode=True)
                alone = model(input_ids=ids[i : i + 1]).logits
            torch.testing.assert_close(mixed[i : i + 1], alone)


@pytest.mark.parametrize("change", ["replace a weight", "replace a module", "set_scale", "in place"])
def test_cached_stacks_follow_replaced_weights_modules_and_scalings(change: str) -> None:
    model = model_with_adapters()
    names = ["c", "default", "b", "c"]
    ids = torch.randint(0, 64, (len(names), 1), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        before = model(input_ids=ids, adapter_names=names).logits
    for module in model.modules():
        if not hasattr(module, "lora_B") or "c" not in module.lora_B:
            continue
        weight = module.lora_B["c"].weight
        if change == "replace a weight":
            module.lora_B["c"].weight = torch.nn.Parameter(torch.randn_like(weight), requires_grad=False)
        elif change == "replace a module":
            fresh = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False).requires_grad_(False)
            module.lora_B["c"] = fresh
        elif change == "set_scale":
            module.set_scale("c", 3.0)
        else:
            with torch.no_grad():
                weight.mul_(-2)
    with torch.no_grad():
        after = model(input_ids=ids, adapter_names=names).logits
    assert not torch.allclose(before, after)
    for i, name in enumerate(names):
        model.set_adapter(name, inference_mode=True)
        with torch.no_grad():
            torch.testing.assert_close(after[i : i + 1], model(input_ids=ids[i : i + 1]).logits)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mix", sorted(MIXES))
def test_segmented_on_cuda_equals_cpu_path(mix: str) -> None:
    slots = MIXES[mix]
    gen = torch.Generator().manual_seed(7)
    x, result = torch.randn(len(slots), 2, 7, generator=gen), torch.randn(len(slots), 2, 4, generator=gen)
    A_t, B_t = stacks()
    cpu = stacked.add_routed(result.clone(), x, A_t, B_t, torch.tensor(slots))
    plan = segments.plan(slots, SLOTS).to(torch.device("cuda"))
    got = segments.add_segmented(result.cuda(), x.cuda(), A_t.cuda(), B_t.cuda(), plan)
    torch.testing.assert_close(got.cpu(), cpu, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mixed_batch_on_cuda_equals_cpu_model() -> None:
    cpu_model, cuda_model = model_with_adapters(), model_with_adapters().cuda()
    names = ["c", "default", "__base__", "b", "c", "c"]
    ids = torch.randint(0, 64, (len(names), 1), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = cpu_model(input_ids=ids, adapter_names=names).logits
        got = cuda_model(input_ids=ids.cuda(), adapter_names=names).logits
    torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-4)


def test_cached_stacks_follow_an_adapter_edited_while_no_batch_read_it() -> None:
    """The stacks are checked for in-place edits only in the slots a call reads: an adapter edited between two
    calls that do not read it, then read, must be rebuilt; so must a factor deleted and put back."""
    model = model_with_adapters()
    ids = torch.randint(0, 64, (3, 1), generator=torch.Generator().manual_seed(5))
    without_c, with_c = ["default", "b", "b"], ["c", "default", "c"]
    with torch.no_grad():
        model(input_ids=ids, adapter_names=without_c)  # builds the stacks; "c" is not read
        layers = [m for m in model.modules() if hasattr(m, "lora_B") and "c" in m.lora_B]
        for layer in layers:
            layer.lora_B["c"].weight.mul_(-3)
        model(input_ids=ids, adapter_names=without_c)
        edited = model(input_ids=ids, adapter_names=with_c).logits
        for layer in layers:
            fresh = torch.nn.Linear(layer.lora_A["b"].in_features, layer.lora_A["b"].out_features, bias=False)
            del layer.lora_A["b"]
            layer.lora_A["b"] = fresh.requires_grad_(False)
        replaced = model(input_ids=ids, adapter_names=without_c).logits
    for mixed, names in ((edited, with_c), (replaced, without_c)):
        for i, name in enumerate(names):
            model.set_adapter(name, inference_mode=True)
            with torch.no_grad():
                torch.testing.assert_close(mixed[i : i + 1], model(input_ids=ids[i : i + 1]).logits)
