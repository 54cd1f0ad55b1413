"""Hot-swapping LoRA on fused expert parameters (``target_parameters``, one LoRA per expert) as Linear LoRA swaps:
without preparation a smaller rank fills each expert's leading rank block and a larger one grows the slot; after
``prepare_model_for_compiled_hotswap(target_rank=R)`` every expert's factors are zero-padded to ``R`` and swaps
do not recompile; the model methods refuse a rank past the slot's. After every swap the outputs equal a fresh
load of the new adapter, on both expert layouts ((E, out, in) Mixtral and (E, in, out) gpt-oss)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tests._tiny import build_model, model_inputs
from torch import nn

import peftkit
from peftkit.hotswap import hotswap_adapter, prepare_model_for_compiled_hotswap
from peftkit.methods.lora.param import ParamWrapper

TARGETS = ["experts.gate_up_proj", "experts.down_proj"]
ADAPTERS: dict[str, dict[str, Any]] = {
    "r3": {"r": 3, "lora_alpha": 16},
    "r2": {"r": 2, "lora_alpha": 4},
    "r4_rslora": {"r": 4, "lora_alpha": 3, "use_rslora": True},
    "r4_patterns": {"r": 4, "lora_alpha": 8, "rank_pattern": {"down_proj": 1}, "alpha_pattern": {"gate_up_proj": 2}},
}


@pytest.fixture(scope="module", params=["mixtral", "gpt_oss"])
def adapters(request, tmp_path_factory) -> tuple[str, dict[str, Path]]:  # type: ignore[no-untyped-def]
    kind, root = request.param, tmp_path_factory.mktemp(f"expert_adapters_{request.param}")
    for seed, (name, fields) in enumerate(ADAPTERS.items()):
        torch.manual_seed(10 + seed)
        config = peftkit.LoraConfig(
            task_type="CAUSAL_LM", target_modules=[], target_parameters=TARGETS, init_lora_weights=False, **fields
        )
        peftkit.get_peft_model(build_model(kind), config).save_pretrained(root / name)
    return kind, {name: root / name for name in ADAPTERS}


def output(model: nn.Module, kind: str) -> torch.Tensor:
    with torch.no_grad():
        return model(**model_inputs(kind)).logits


def fresh(kind: str, path: Path) -> torch.Tensor:
    return output(peftkit.PeftModel.from_pretrained(build_model(kind), path), kind)


def expert_layers(model: nn.Module) -> list[ParamWrapper]:
    return [m for m in model.modules() if isinstance(m, ParamWrapper)]


def test_swaps_without_preparation_fit_any_rank(adapters) -> None:  # type: ignore[no-untyped-def]
    kind, paths = adapters
    model = peftkit.PeftModel.from_pretrained(build_model(kind), paths["r3"])
    for name in ("r2", "r4_rslora", "r2", "r4_patterns", "r3"):  # smaller, larger (grows), smaller, patterns
        hotswap_adapter(model, paths[name], adapter_name="default")
        torch.testing.assert_close(output(model, kind), fresh(kind, paths[name]))
    assert {layer.r["default"] for layer in expert_layers(model)} == {4}  # grown once, then filled per expert


def test_prepared_model_swaps_without_recompiling(adapters, tmp_path) -> None:  # type: ignore[no-untyped-def]
    kind, paths = adapters
    model = peftkit.PeftModel.from_pretrained(build_model(kind), paths["r2"])
    prepare_model_for_compiled_hotswap(model, target_rank=4)
    for layer in expert_layers(model):  # every expert padded: A (R E, in), B (out, R E)
        A, B = layer.factor_tensors("default")
        assert (A.shape[0], B.shape[1], layer.r["default"]) == (4 * layer.num_experts, 4 * layer.num_experts, 4)
    torch.testing.assert_close(output(model, kind), fresh(kind, paths["r2"]))
    params = {n: p for n, p in model.named_parameters() if ".lora_" in n}
    compiled = torch.compile(model, backend="eager")
    output(compiled, kind)
    for name in ("r4_rslora", "r3", "r4_patterns", "r2"):
        hotswap_adapter(model, paths[name], adapter_name="default")
        with torch._dynamo.config.patch(error_on_recompile=True):
            torch.testing.assert_close(output(compiled, kind), fresh(kind, paths[name]))
    assert {n: p for n, p in model.named_parameters() if ".lora_" in n} == params
    hotswap_adapter(model, paths["r4_patterns"], adapter_name="default")
    model.save_pretrained(tmp_path / "saved")  # the config as held (padded ranks, patterns) reloads the same
    torch.testing.assert_close(fresh(kind, tmp_path / "saved"), output(model, kind))
    with pytest.raises(peftkit.HotswapError, match="rank 4"):
        prepare_model_for_compiled_hotswap(model, target_rank=3)


def test_model_methods_pad_to_target_rank_and_refuse_past_it(adapters) -> None:  # type: ignore[no-untyped-def]
    kind, paths = adapters
    model = peftkit.enable_adapter_methods(build_model(kind))
    model.enable_peft_hotswap(target_rank=3)
    model.load_adapter(paths["r2"])
    assert {layer.r["default"] for layer in expert_layers(model)} == {3}
    model.load_adapter(paths["r3"], hotswap=True)
    torch.testing.assert_close(output(model, kind), fresh(kind, paths["r3"]))
    before = output(model, kind)
    with pytest.raises(peftkit.HotswapError, match="slot holds rank 3"):
        model.load_adapter(paths["r4_rslora"], hotswap=True)
    torch.testing.assert_close(output(model, kind), before)
