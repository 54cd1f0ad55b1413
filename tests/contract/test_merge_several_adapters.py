"""Several adapters active on the same layers, merged together or one ``merge_adapter`` call at a time, for
every layer method whose merge reads or rewrites the base weight: merged equals unmerged, and unmerging
restores the base weights (the DoRA formula itself is in tests/reference/test_dora_merge_several.py).

Covers LoRA with DoRA after plain LoRA (the DoRA norm must come from the weight with nothing merged), IA3
with an attention-type and a feed-forward adapter on the same layers (scaling the output rows and the input
columns of one weight), and AdaLoRA, on a tiny Llama in float64.
"""

from __future__ import annotations

import pytest
import torch
from tests.compat._models import build_model, model_inputs

import peftkit

TARGETS = ["q_proj", "v_proj", "down_proj"]
PAIRS = {
    "lora+dora": ({"r": 2, "lora_alpha": 4}, {"r": 3, "lora_alpha": 5, "use_dora": True}),
    "dora+dora": ({"r": 2, "use_dora": True}, {"r": 3, "lora_alpha": 5, "use_dora": True}),
    "ia3 attention+feedforward": ({"feedforward_modules": []}, {"feedforward_modules": TARGETS}),
    "adalora+adalora": (  # AdaLoRA trains one adapter at a time: the second is added frozen
        {"init_r": 3, "target_r": 2, "total_step": 10},
        {"init_r": 2, "target_r": 1, "total_step": 10, "inference_mode": True},
    ),
}


def config(pair: str, fields: dict):
    cls = {"lora": peftkit.LoraConfig, "dora": peftkit.LoraConfig, "ia3": peftkit.IA3Config}.get(
        pair.split("+")[0].split()[0], peftkit.AdaLoraConfig
    )
    extra = {"init_lora_weights": False} if cls is peftkit.LoraConfig else {}
    return cls(target_modules=TARGETS, **extra, **fields)


@pytest.mark.parametrize("pair", list(PAIRS))
@pytest.mark.parametrize("one_call", [True, False], ids=["together", "one-by-one"])
def test_merged_equals_unmerged_and_unmerge_restores(pair: str, one_call: bool) -> None:
    first, second = PAIRS[pair]
    model = peftkit.get_peft_model(build_model("llama").double(), config(pair, first), adapter_name="one")
    model.add_adapter("two", config(pair, second))
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():  # every adapter tensor, trainable or not, away from its initial value
        for name, param in model.named_parameters():
            if any(f".{adapter}" in name for adapter in ("one", "two")) and ".ranknum." not in name:
                param.add_(0.3 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
    model.base_model.set_adapter(["one", "two"])
    model.eval()
    base_weights = {n: p.detach().clone() for n, p in model.named_parameters() if ".base_layer." in n}
    inputs = model_inputs("llama")
    with torch.no_grad():
        unmerged = model(**inputs).logits
        single = model.base_model.set_adapter("one") or model(**inputs).logits
    model.base_model.set_adapter(["one", "two"])
    assert not torch.allclose(unmerged, single), "the second adapter must change the output"
    for group in [["one", "two"]] if one_call else [["one"], ["two"]]:
        model.merge_adapter(group)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, unmerged, rtol=1e-9, atol=1e-9)
    model.unmerge_adapter()
    for name, param in model.named_parameters():
        if name in base_weights:
            torch.testing.assert_close(param.detach(), base_weights[name], rtol=1e-12, atol=1e-12, msg=name)
