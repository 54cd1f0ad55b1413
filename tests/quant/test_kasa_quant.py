"""KaSA (``kasa_config``) on quantized bases: the base keeps the ``k - r`` largest singular components of its
dequantized weight, requantized in its own format. The reference peft 0.21.2 is no oracle here: it takes the SVD
of bitsandbytes' int8 codes as if they were the weight (outputs far off) and fails on 4-bit bases."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.quant._quant_models import load_quantized

import peftkit
from peftkit.methods.lora.variants.kasa import truncate_minor_components
from peftkit.quant.base import dense_weight


# nf4's rounding (about 10% of the weights' scale) is larger than what a rank-8 truncation removes from these weights
@pytest.mark.parametrize(
    ("kind", "atol", "fine"), [("int8", 2e-3, True), ("nf4", 2e-2, False), ("torchao-int8", 2e-3, True)]
)
def test_quantized_base_is_truncated_in_its_dequantized_values(
    tiny_dir: Path, kind: str, atol: float, fine: bool
) -> None:
    model = load_quantized(tiny_dir, kind)
    before = {name: dense_weight(model.model.layers[i].self_attn.q_proj).float().clone() for i, name in enumerate("ab")}
    config = peftkit.LoraConfig(r=8, target_modules=["q_proj"], kasa_config=peftkit.KasaConfig())
    peft_model = peftkit.get_peft_model(model, config)
    for i, name in enumerate("ab"):
        after = dense_weight(peft_model.base_model.model.model.layers[i].self_attn.q_proj.base_layer).float()
        kept, dropped_us, dropped_vh = truncate_minor_components(before[name], 8)
        torch.testing.assert_close(after, kept, atol=atol, rtol=0)
        if fine:  # what changed is the dropped components, not quantization noise alone
            assert (after - kept).norm() < (after - before[name]).norm()
        torch.testing.assert_close(before[name] - kept, dropped_us @ dropped_vh, atol=1e-5, rtol=0)
