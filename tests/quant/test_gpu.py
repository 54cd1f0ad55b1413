"""QLoRA on a CUDA device: bitsandbytes 4-bit and torchao int4 weight-only (``Int4WeightOnlyConfig`` has no CPU
kernel in torchao 0.18: its packing formats need CUDA, XPU or the ``mslk`` library). Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch
from tests.quant._quant_models import METHODS, load_quantized, token_batch
from tests.quant.test_training import adapter_gradients
from transformers import AutoModelForCausalLM, TorchAoConfig

import peftkit

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torchao int4 has no CPU kernel)"),
]


def torchao_int4(tiny_dir) -> torch.nn.Module:
    from torchao.quantization import Int4WeightOnlyConfig

    config = TorchAoConfig(Int4WeightOnlyConfig(group_size=32, int4_packing_format="tile_packed_to_4d"))
    return AutoModelForCausalLM.from_pretrained(
        tiny_dir, quantization_config=config, dtype=torch.bfloat16, device_map="cuda"
    )


@pytest.mark.parametrize("builder", ["nf4", "torchao-int4"])
def test_gradients_survive_an_evaluation_on_cuda(tiny_dir, builder: str) -> None:
    base = torchao_int4(tiny_dir) if builder == "torchao-int4" else load_quantized(tiny_dir, "nf4", device_map="cuda")
    model = peftkit.get_peft_model(base, METHODS["lora"]())
    ids = token_batch().cuda()
    before = adapter_gradients(model, ids)
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    after = adapter_gradients(model, ids)
    for name, grad in before.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(after[name], grad, rtol=0, atol=0, msg=name)


def test_merge_and_unmerge_on_cuda_4bit(tiny_dir) -> None:
    model = peftkit.get_peft_model(load_quantized(tiny_dir, "nf4", device_map="cuda"), METHODS["lora"]())
    ids = token_batch().cuda()
    model.eval()
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
        with pytest.warns(UserWarning, match="quantized again"):
            model.merge_adapter()
        merged = model(input_ids=ids).logits
        model.unmerge_adapter()
        restored = model(input_ids=ids).logits
    assert (merged - unmerged).abs().max() < 0.3
    assert torch.equal(restored, unmerged)
