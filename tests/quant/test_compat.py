"""QLoRA adapters move between the reference peft 0.21.2 and peftkit on a 4-bit base with equal outputs.

Outputs are compared in training mode under ``no_grad`` (no dropout is configured): in eval mode the reference
lets bitsandbytes repack its 4-bit weights for CPU inference on AVX512-BF16 CPUs (block scales rounded to
bfloat16), which would compare two different base models.
"""

from __future__ import annotations

from types import ModuleType

import peft
import pytest
import torch
from safetensors.torch import load_file
from tests.quant._quant_models import TARGETS, load_quantized, token_batch

import peftkit

LIBS: dict[str, ModuleType] = {"peft": peft, "peftkit": peftkit}
CONFIGS = {
    "lora": {"r": 4, "lora_alpha": 8, "target_modules": TARGETS, "init_lora_weights": False},
    "dora": {"r": 4, "lora_alpha": 8, "target_modules": TARGETS, "init_lora_weights": False, "use_dora": True},
}


def train_mode_logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    model.train()
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("kind", ["nf4", "nf4-bf16-dq", "int8"])
@pytest.mark.parametrize(("source", "target"), [("peft", "peftkit"), ("peftkit", "peft")])
def test_qlora_adapter_crosses_libraries(tiny_dir, tmp_path, config: str, kind: str, source: str, target: str) -> None:
    src, dst = LIBS[source], LIBS[target]
    torch.manual_seed(0)
    saved = src.get_peft_model(load_quantized(tiny_dir, kind), src.LoraConfig(**CONFIGS[config]))
    saved.save_pretrained(tmp_path)
    loaded = dst.PeftModel.from_pretrained(load_quantized(tiny_dir, kind), tmp_path)
    ids = token_batch()
    expected = train_mode_logits(saved, ids)
    base = train_mode_logits(load_quantized(tiny_dir, kind), ids)
    assert (expected - base).abs().max() > 0.1, "the adapter must change the output"
    torch.testing.assert_close(train_mode_logits(loaded, ids), expected, rtol=1e-5, atol=1e-5)
    files = load_file(tmp_path / "adapter_model.safetensors")
    reloaded = dst.get_peft_model_state_dict(loaded)
    assert sorted(files) == sorted(reloaded)
