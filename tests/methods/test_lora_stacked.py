"""Stacked LoRA adapters: mixed batches over adapters of different ranks equal each sample run alone, and
under ``torch.compile`` set_adapter / several active adapters / hot-swap / new mixes give the eager outputs
without recompiling (a counting backend, so nothing is lowered)."""

from __future__ import annotations

import logging

import pytest
import torch
from tests._tiny import llama_config
from torch._dynamo.testing import CompileCounter
from transformers import LlamaForCausalLM

import peftkit
from peftkit.methods.lora.stacked import stack_factors

RANKS = {"default": 4, "b": 2, "c": 8}


def model_with_adapters() -> peftkit.PeftModel:
    torch.manual_seed(0)
    base = LlamaForCausalLM(llama_config(layers=1))
    model = None
    for name, r in RANKS.items():
        config = peftkit.LoraConfig(
            task_type="CAUSAL_LM", r=r, lora_alpha=3 * r + 1, target_modules="all-linear", init_lora_weights=False
        )
        if model is None:
            model = peftkit.get_peft_model(base, config, adapter_name=name)
        else:
            model.add_adapter(name, config)
    assert model is not None
    model.set_adapter("default", inference_mode=True)
    return model.eval()


def logits(model: torch.nn.Module, ids: torch.Tensor, names: list[str] | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, **({} if names is None else {"adapter_names": names})).logits


IDS = torch.randint(0, 64, (4, 5), generator=torch.Generator().manual_seed(1))


def alone(model: peftkit.PeftModel, names: list[str], ids: torch.Tensor = IDS) -> torch.Tensor:
    """Each sample through its own adapter (or none), one at a time."""
    rows = []
    for i, name in enumerate(names):
        if name == "__base__":
            with model.disable_adapter():
                rows.append(logits(model, ids[i : i + 1]))
        else:
            model.set_adapter(name, inference_mode=True)
            rows.append(logits(model, ids[i : i + 1]))
    model.set_adapter("default", inference_mode=True)
    return torch.cat(rows)


def test_mixed_batch_over_different_ranks_equals_each_sample_alone() -> None:
    model = model_with_adapters()
    for names in (["c", "default", "__base__", "b"], ["b", "b", "c", "c"]):
        torch.testing.assert_close(logits(model, IDS, names), alone(model, names))


def test_stack_pads_ranks_with_zeros_and_folds_the_scaling() -> None:
    model = model_with_adapters()
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    A_t, B_t = stack_factors(layer, ["b", "c", "missing"])
    assert A_t.shape == (4, layer.in_features, 8) and B_t.shape == (4, 8, layer.out_features)
    torch.testing.assert_close(A_t[0] @ B_t[0], layer.get_delta_weight("b").T)
    torch.testing.assert_close(A_t[1] @ B_t[1], layer.get_delta_weight("c").T)
    assert not A_t[2:].any() and not B_t[2:].any()


def test_cached_stacks_follow_weight_updates() -> None:
    model = model_with_adapters()
    names = ["c", "default", "b", "c"]
    before = logits(model, IDS, names)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B.c." in name:
                param.mul_(2)
    after = logits(model, IDS, names)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, alone(model, names))


class Recompiles(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += "Recompiling function" in record.getMessage()


@pytest.fixture
def recompiles():
    torch._dynamo.reset()
    torch._logging.set_logs(recompiles=True)
    logger = logging.getLogger("torch._dynamo.guards.__recompiles")
    handler = Recompiles()
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    torch._logging.set_logs()
    torch._dynamo.reset()


def test_compiled_model_switches_swaps_and_mixes_without_recompiling(recompiles, tmp_path) -> None:
    model = model_with_adapters()
    peftkit.prepare_model_for_compiled_hotswap(model, target_rank=8)
    compiled = torch.compile(model, backend=CompileCounter())
    torch.testing.assert_close(logits(compiled, IDS), logits(model, IDS))
    logits(compiled, IDS, ["b", "c", "default", "__base__"])  # first mixed call: a new code path
    settled = recompiles.count
    for name in ("c", "b", "default"):
        model.set_adapter(name, inference_mode=True)
        torch.testing.assert_close(logits(compiled, IDS), logits(model, IDS))
    for names in (["c", "c", "b", "default"], ["__base__", "b", "b", "c"]):
        torch.testing.assert_close(logits(compiled, IDS, names), alone(model, names))
    other = model_with_adapters()
    with torch.no_grad():
        for param in other.parameters():
            param.add_(0.1)
    other.save_pretrained(tmp_path, selected_adapters=["c"])
    peftkit.hotswap_adapter(model, str(tmp_path / "c"), adapter_name="default")
    torch.testing.assert_close(logits(compiled, IDS), logits(model, IDS))
    assert recompiles.count == settled


def test_compiled_model_with_two_active_adapters_sums_them(recompiles) -> None:
    model = model_with_adapters()
    model.base_model.set_adapter(["b", "c"], inference_mode=True)
    compiled = torch.compile(model, backend=CompileCounter())
    expected = logits(model, IDS)
    torch.testing.assert_close(logits(compiled, IDS), expected)
    model.base_model.set_adapter(["default", "c"], inference_mode=True)
    torch.testing.assert_close(logits(compiled, IDS), logits(model, IDS))
    assert recompiles.count == 0
