"""One adapter per model may train base-model biases (``bias`` other than ``"none"``), as in the reference peft
0.21.2: a second such adapter, added or loaded, is refused with a ``ValueError`` before anything changes; adapters
with ``bias="none"`` join freely, and methods without a ``bias`` field are not concerned."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import peft
import pytest
from tests._tiny import build_model

import peftkit

CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "lora": ("LoraConfig", {"r": 2, "target_modules": ["q_proj"]}),
    "vera": ("VeraConfig", {"r": 2, "target_modules": ["q_proj", "k_proj"]}),
    "adalora": ("AdaLoraConfig", {"init_r": 2, "total_step": 9, "target_modules": ["q_proj"], "inference_mode": True}),
}  # fmt: skip


def _config(lib: ModuleType, case: str, bias: str) -> Any:
    name, fields = CONFIGS[case]
    return getattr(lib, name)(**fields, bias=bias)


def _outcome(lib: ModuleType, case: str, first: str, second: str) -> tuple[str, list[str]]:
    model = lib.get_peft_model(build_model("llama"), _config(lib, case, first))
    try:
        model.add_adapter("other", _config(lib, case, second))
    except ValueError:
        return "refused", sorted(model.peft_config)
    return "added", sorted(model.peft_config)


@pytest.mark.parametrize("case", sorted(CONFIGS))
@pytest.mark.parametrize(("first", "second"), [("all", "lora_only"), ("lora_only", "lora_only"), ("all", "none"),
                                               ("none", "all"), ("none", "none")])  # fmt: skip
def test_second_bias_adapter_as_in_reference(case: str, first: str, second: str) -> None:
    if case == "vera":
        first, second = (b.replace("lora_only", "vera_only") for b in (first, second))
    ours = _outcome(peftkit, case, first, second)
    assert ours == _outcome(peft, case, first, second)
    assert ours[0] == ("refused" if "none" not in (first, second) else "added")


def test_loading_a_second_bias_adapter_is_refused_untouched(tmp_path: Path) -> None:
    saved = peftkit.get_peft_model(build_model("llama"), _config(peftkit, "lora", "all"))
    saved.save_pretrained(tmp_path)
    for lib in (peft, peftkit):
        model = lib.get_peft_model(build_model("llama"), _config(lib, "lora", "lora_only"))
        before = sorted(model.state_dict())
        with pytest.raises(ValueError, match="bias"):
            model.load_adapter(tmp_path, adapter_name="other")
        assert sorted(model.peft_config) == ["default"]
        assert sorted(model.state_dict()) == before
