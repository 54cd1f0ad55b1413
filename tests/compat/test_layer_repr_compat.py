"""How an adapted layer prints: PEFT's ``<method>.<layer>(...)`` name (``lora.Linear``, ``lora.Conv2d``,
``adalora.SVDLinear``, ``loha.Conv2d``...) for every method and base-layer type, as the reference peft 0.21.2
prints it, with the base layer and the adapter names inside."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import peft
import pytest
from torch import nn

import peftkit

MODULES = ("emb", "lin0", "conv2d", "conv1d")
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "lora": ("LoraConfig", {"target_modules": list(MODULES)}),
    "adalora": ("AdaLoraConfig", {"target_modules": ["lin0"], "total_step": 10}),
    "loha": ("LoHaConfig", {"target_modules": ["lin0", "conv2d", "conv1d"]}),
    "lokr": ("LoKrConfig", {"target_modules": ["lin0", "conv2d"]}),
    "oft": ("OFTConfig", {"target_modules": ["lin0"], "r": 5, "oft_block_size": 0}),
    "boft": ("BOFTConfig", {"target_modules": ["lin0"], "boft_block_size": 1}),
    "vera": ("VeraConfig", {"target_modules": ["lin0"]}),
    "ia3": ("IA3Config", {"target_modules": ["lin0", "conv2d"], "feedforward_modules": []}),
}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.lin0 = nn.Embedding(100, 5), nn.Linear(5, 5)
        self.conv2d, self.conv1d = nn.Conv2d(5, 10, 3), nn.Conv1d(5, 5, 1)


def _reprs(lib: ModuleType, case: str) -> dict[str, str]:
    name, fields = CONFIGS[case]
    model = lib.get_peft_model(Net(), getattr(lib, name)(**fields)).base_model.model
    return {module: repr(getattr(model, module)) for module in MODULES}


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_printed_layer_names_match_reference(case: str) -> None:
    ours, theirs = _reprs(peftkit, case), _reprs(peft, case)
    assert {k: v.split("(")[0] for k, v in ours.items()} == {k: v.split("(")[0] for k, v in theirs.items()}
    for module, text in ours.items():
        if "." in text.split("(")[0]:  # an adapted layer: its base layer and adapter are printed inside
            assert repr(getattr(Net(), module)) in text and "default" in text
