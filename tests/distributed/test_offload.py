"""Adapters on a base dispatched by accelerate (``device_map`` with CPU and disk offload): every adapter tensor
sits where its layer computes (never on ``meta``), outputs equal the non-offloaded model, and merging writes into
the offloaded weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.distributed._common import tiny_llama
from transformers import LlamaForCausalLM

import peftkit

DEVICE_MAP = {
    "model.embed_tokens": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.norm": "cpu",
    "model.rotary_emb": "cpu",
    "lm_head": "cpu",
}


@pytest.fixture(scope="module", params=[False, True], ids=["lora", "dora"])
def saved(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, torch.Tensor, torch.Tensor]:
    """A base model directory, a trained-looking LoRA (or DoRA: its norm reads the base weight) adapter, an
    input and the plain model's logits."""
    root = tmp_path_factory.mktemp("offload")
    tiny_llama().save_pretrained(root / "base")
    torch.manual_seed(3)
    config = peftkit.LoraConfig(
        r=4, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False, use_dora=request.param
    )
    model = peftkit.get_peft_model(LlamaForCausalLM.from_pretrained(root / "base"), config)
    model.save_pretrained(root / "adapter")
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    return root / "base", root / "adapter", ids, logits


def dispatched(base: Path, offload: Path, device_map: dict | str) -> LlamaForCausalLM:
    return LlamaForCausalLM.from_pretrained(base, device_map=device_map, offload_folder=str(offload))


@pytest.mark.parametrize("where", ["disk", "cpu_offload"])
def test_load_onto_offloaded_base(saved, tmp_path: Path, where: str) -> None:
    base_dir, adapter_dir, ids, expected = saved
    if where == "disk":
        base = dispatched(base_dir, tmp_path, DEVICE_MAP)
    else:  # CPU offload: weights kept in CPU memory by the hook, loaded per forward
        from accelerate import cpu_offload

        base = cpu_offload(LlamaForCausalLM.from_pretrained(base_dir), execution_device=torch.device("cpu"))
    assert base.model.layers[1].self_attn.q_proj.weight.is_meta  # really offloaded
    model = peftkit.PeftModel.from_pretrained(base, adapter_dir)
    adapters = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert adapters and all(p.device.type == "cpu" for p in adapters.values())
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)
        merged = model.merge_and_unload()
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)


def test_inject_onto_offloaded_base_trains_where_the_layer_computes(saved, tmp_path: Path) -> None:
    base_dir, _, ids, _ = saved
    base = dispatched(base_dir, tmp_path, DEVICE_MAP)
    with torch.no_grad():
        plain = base(input_ids=ids).logits
    model = peftkit.get_peft_model(base, peftkit.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    layer = model.base_model.model.model.layers[1].self_attn.q_proj
    assert layer.lora_A["default"].weight.device.type == "cpu" and layer.lora_A["default"].weight.abs().sum() > 0
    assert torch.count_nonzero(layer.lora_B["default"].weight) == 0  # B = 0: the model starts as its base
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, plain)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert layer.lora_B["default"].weight.grad is not None and layer.lora_B["default"].weight.grad.abs().sum() > 0
