"""Several LoRA / DoRA adapters active on one layer, merged together or one merge call at a time.

Oracle: the adapters compose in order, each DoRA norm taken from the base weight ``W0`` with nothing merged
(as the unmerged forward computes it):
``W_j = (m_j / ||W0 + d_j||_row) * (W_{j-1} + d_j)`` for DoRA, ``W_j = W_{j-1} + d_j`` for plain LoRA, with
``d_j = s_j B_j A_j``; ``y = x W_k^T + b``. Merged must equal unmerged, and unmerging must give ``W0`` back.
Covers ``nn.Linear`` and GPT-2 ``Conv1D`` (weight stored transposed), in float64 so that the checks are tight.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import peftkit as peft

LAYERS = {"linear": lambda: nn.Linear(6, 5), "conv1d": lambda: Conv1D(5, 6)}
#: Which adapters use DoRA, in activation (= merge) order.
MIXES = {"dora+dora": (True, True), "lora+dora": (False, True), "dora+lora+dora": (True, False, True)}


def build(kind: str, mix: tuple[bool, ...]):
    model = None
    names = [f"a{i}" for i in range(len(mix))]
    for name, dora in zip(names, mix):
        config = peft.LoraConfig(target_modules=["0"], r=2, lora_alpha=3, use_dora=dora, init_lora_weights=False)
        if model is None:
            model = peft.get_peft_model(nn.Sequential(LAYERS[kind]()).double(), config, adapter_name=name)
        else:
            model.add_adapter(name, config)
    layer = model.base_model.model[0]
    with torch.no_grad():  # magnitudes that differ from the initial row norms
        for name, dora in zip(names, mix):
            if dora:
                layer.lora_magnitude_vector[name].weight.mul_(torch.rand(5, dtype=torch.float64) + 0.5)
    model.base_model.set_adapter(names)
    return model.eval(), layer, names


def expected_weight(layer, names: list[str], kind: str) -> torch.Tensor:
    """The oracle's ``W_k (out, in)``."""
    W0 = layer.get_base_layer().weight.detach().clone()
    W0 = W0.T if kind == "conv1d" else W0
    W = W0.clone()
    for name in names:
        d = 1.5 * layer.lora_B[name].weight.detach() @ layer.lora_A[name].weight.detach()
        W = W + d
        if layer.use_dora[name]:
            W = (layer.lora_magnitude_vector[name].weight.detach() / (W0 + d).norm(dim=1))[:, None] * W
    return W


@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("mix", list(MIXES))
@pytest.mark.parametrize("one_call", [True, False], ids=["merged-together", "merged-one-by-one"])
def test_merged_equals_unmerged_and_unmerge_restores_base(kind: str, mix: str, one_call: bool) -> None:
    model, layer, names = build(kind, MIXES[mix])
    base = layer.get_base_layer()
    original = base.weight.detach().clone()
    x = torch.randn(4, 6, dtype=torch.float64)
    W = expected_weight(layer, names, kind)
    unmerged = model(x)
    torch.testing.assert_close(unmerged, x @ W.T + base.bias, rtol=1e-10, atol=1e-10)

    for group in [names] if one_call else [[n] for n in names]:
        model.merge_adapter(group)
    assert layer.merged_adapters == names
    torch.testing.assert_close(base.weight.detach(), W.T if kind == "conv1d" else W, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(model(x), unmerged, rtol=1e-10, atol=1e-10)

    model.unmerge_adapter()
    torch.testing.assert_close(base.weight.detach(), original, rtol=0, atol=1e-12)
    torch.testing.assert_close(model(x), unmerged, rtol=0, atol=1e-12)


def test_merge_and_unload_of_two_dora_adapters_matches_reference_peft() -> None:
    """The issue's case: ``nn.Linear(2, 2, bias=False)``, two DoRA adapters (r=1, random), both active."""
    import peft as reference

    outputs = []
    for lib in (peft, reference):
        torch.manual_seed(0)
        config = {"r": 1, "target_modules": ["0"], "use_dora": True, "init_lora_weights": False}
        model = lib.get_peft_model(nn.Sequential(nn.Linear(2, 2, bias=False)), lib.LoraConfig(**config))
        model.add_adapter("b", lib.LoraConfig(**config))
        model.base_model.set_adapter(["default", "b"])
        x = torch.tensor([[1.0, -1.0]])
        unmerged = model(x).detach()
        outputs.append((unmerged, model.merge_and_unload()(x).detach()))
    (kit_unmerged, kit_merged), (ref_unmerged, ref_merged) = outputs
    torch.testing.assert_close(kit_merged, kit_unmerged, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kit_unmerged, ref_unmerged, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kit_merged, ref_merged, rtol=1e-5, atol=1e-6)
