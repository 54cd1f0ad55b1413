"""BD-LoRA (``use_bdlora``) against the reference: adapters saved by either library load in the other with the
same outputs, unmerged and merged; both write the same config JSON, tensor keys and packed shapes; the same
factors give the same forward, ``get_delta_weight`` and merged weights layer by layer; the reference's refusals
are refusals here, with the same exception type."""

from __future__ import annotations

import copy
from typing import Any

import peft
import pytest
import torch
from peft.tuners.lora.variants import BdLoraLinearVariant
from tests._tiny import build_model, model_inputs, model_output
from tests.compat._cross import Adapter, compat_tests

import peftkit

ATTENTION_AND_MLP = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
#: The layout the reference documents for tensor parallelism: row-sharded layers get a block-diagonal A,
#: column-sharded ones a block-diagonal B.
SHARDED: dict[str, Any] = {
    "target_modules_bd_a": ["o_proj", "down_proj"],
    "target_modules_bd_b": ["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"],
    "nblocks": 2,
}
LLAMA: dict[str, Any] = {"r": 4, "target_modules": ATTENTION_AND_MLP, "use_bdlora": SHARDED}
CROSS = [
    Adapter("llama_sharded", "LoraConfig", LLAMA),
    Adapter(
        "four_blocks_rslora",
        "LoraConfig",
        {**LLAMA, "r": 8, "use_rslora": True, "use_bdlora": {**SHARDED, "nblocks": 4}},
    ),
    Adapter(
        "not_strict_rank_pattern",
        "LoraConfig",
        {
            "r": 4,
            "target_modules": ["q_proj", "v_proj", "down_proj"],
            "rank_pattern": {"down_proj": 2},
            "use_bdlora": {"target_modules_bd_a": ["down_proj"], "nblocks": 2, "match_strict": False},
        },
        name="other",
    ),
]
test_cross_load, test_same_files_and_counts = compat_tests(CROSS, CROSS)


def _paired_layers(ref: Any, kit: Any) -> list[tuple[str, Any, Any]]:
    kit_modules = dict(kit.named_modules())
    return [(n, m, kit_modules[n]) for n, m in ref.named_modules() if n.endswith(tuple(ATTENTION_AND_MLP))]


@pytest.mark.parametrize("case", CROSS[:2], ids=lambda a: a.id)
def test_same_factors_same_forward_delta_and_merge(case: Adapter) -> None:
    base = build_model(case.model)
    ref = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**case.fields))
    kit = peftkit.get_peft_model(copy.deepcopy(base), peftkit.LoraConfig(**case.fields))
    gen = torch.Generator().manual_seed(3)
    ref_params = {n: p for n, p in ref.named_parameters() if ".lora_" in n}
    kit_params = {n: p for n, p in kit.named_parameters() if ".lora_" in n}
    assert {n: p.shape for n, p in kit_params.items()} == {n: p.shape for n, p in ref_params.items()}
    with torch.no_grad():
        for name, param in ref_params.items():
            param.copy_(0.2 * torch.randn(param.shape, generator=gen))
            kit_params[name].copy_(param)
    for name, ref_layer, kit_layer in _paired_layers(ref, kit):
        # the reference's own get_delta_weight multiplies the packed factors (a shape error for nblocks > 1); its
        # merge uses the variant's delta, which is the oracle here
        expected_delta = BdLoraLinearVariant._get_bdlora_delta_weight(ref_layer, "default")
        torch.testing.assert_close(kit_layer.get_delta_weight("default"), expected_delta, msg=name)
    inputs = model_inputs(case.model)
    expected = model_output(ref, inputs)
    torch.testing.assert_close(model_output(kit, inputs), expected, atol=1e-5, rtol=0)
    ref.merge_adapter()
    kit.merge_adapter()
    for name, ref_layer, kit_layer in _paired_layers(ref, kit):
        torch.testing.assert_close(kit_layer.get_base_layer().weight, ref_layer.get_base_layer().weight, msg=name)
    torch.testing.assert_close(model_output(kit, inputs), model_output(ref, inputs), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "fields",
    [
        {"target_modules": ["q_proj", "v_proj"], "use_bdlora": {"target_modules_bd_a": ["q_proj"]}},
        {"target_modules": ["q_proj"], "use_bdlora": {"target_modules_bd_b": ["q_proj"], "nblocks": 3}},
        {"target_modules": ["q_proj"], "r": 6, "use_bdlora": {"target_modules_bd_a": ["q_proj"], "nblocks": 4}},
        {"target_modules": ["q_proj"], "use_bdlora": {"target_modules_bd_a": ["q"], "target_modules_bd_b": ["proj"]}},
        {"target_modules": ["q_proj", "embed_tokens"], "use_bdlora": {"target_modules_bd_a": ["q_proj", "embed"]}},
        {"target_modules": ["q_proj"], "use_dora": True, "use_bdlora": {"target_modules_bd_a": ["q_proj"]}},
    ],
    ids=["neither_strict", "features_not_divisible", "rank_not_divisible", "both", "embedding", "dora"],
)
def test_refused_where_the_reference_refuses(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        peft.get_peft_model(build_model("llama"), peft.LoraConfig(**fields))
    base = build_model("llama")
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(ValueError):
        peftkit.get_peft_model(base, peftkit.LoraConfig(**fields))
    assert base.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())


def test_overlapping_patterns_refused_by_both_configs() -> None:
    overlap = {"target_modules_bd_a": ["q_proj"], "target_modules_bd_b": ["q_proj"]}
    with pytest.raises(ValueError, match="overlapping"):
        peft.LoraConfig(use_bdlora=overlap)
    with pytest.raises(ValueError, match="overlapping"):
        peftkit.LoraConfig(use_bdlora=overlap)
