"""``autocast_adapter_dtype`` on a half-precision base: the adapter dtypes and outputs of peftkit equal the
reference's, through get_peft_model, add_adapter, PeftModel.from_pretrained and load_adapter, with the flag on
(float32 adapters) and off (the base's dtype), and with low_cpu_mem_usage loads."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import peft
import pytest
import torch
from tests._tiny import build_model, model_inputs, randomise_adapter

import peftkit

LIBS: dict[str, ModuleType] = {"peft": peft, "peftkit": peftkit}
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "lora": ("LoraConfig", {"r": 4, "target_modules": ["q_proj", "v_proj", "embed_tokens"]}),
    "dora": ("LoraConfig", {"r": 4, "target_modules": ["q_proj", "down_proj"], "use_dora": True}),
    "ia3": ("IA3Config", {"target_modules": ["k_proj", "down_proj"], "feedforward_modules": ["down_proj"]}),
    "adalora": ("AdaLoraConfig", {"init_r": 4, "target_r": 2, "total_step": 10, "target_modules": ["q_proj"]}),
}


def _config(lib: ModuleType, case: str) -> Any:
    name, fields = CONFIGS[case]
    return getattr(lib, name)(**fields)


def _adapter_dtypes(model: Any) -> dict[str, torch.dtype]:
    prefix = ("lora_", "ia3_")
    return {n: p.dtype for n, p in model.named_parameters() if any(k in n for k in prefix) or "ranknum" in n}


def _build(lib: ModuleType, case: str, dtype: torch.dtype, autocast: bool) -> Any:
    model = lib.get_peft_model(build_model("llama").to(dtype), _config(lib, case), autocast_adapter_dtype=autocast)
    if case != "adalora":  # AdaLoRA holds one trainable adapter at most
        model.add_adapter("other", _config(lib, case), autocast_adapter_dtype=autocast)
    return model


def _load(lib: ModuleType, case: str, dtype: torch.dtype, autocast: bool, saved: Path, low_cpu: bool) -> Any:
    model = lib.PeftModel.from_pretrained(
        build_model("llama").to(dtype), saved, autocast_adapter_dtype=autocast, low_cpu_mem_usage=low_cpu
    )
    if case != "adalora":
        model.load_adapter(saved / "other", "other", autocast_adapter_dtype=autocast, low_cpu_mem_usage=low_cpu)
    return model


@pytest.mark.parametrize("low_cpu", [False, True])
@pytest.mark.parametrize("autocast", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_adapter_dtypes_match_reference(
    case: str, dtype: torch.dtype, autocast: bool, low_cpu: bool, tmp_path: Path
) -> None:
    built = {name: _build(lib, case, dtype, autocast) for name, lib in LIBS.items()}
    assert _adapter_dtypes(built["peftkit"]) == _adapter_dtypes(built["peft"])
    randomise_adapter(built["peft"])
    built["peft"].save_pretrained(tmp_path)  # saved in the dtype the flag gave: bfloat16 files when it is off
    loaded = {name: _load(lib, case, dtype, autocast, tmp_path, low_cpu) for name, lib in LIBS.items()}
    dtypes = _adapter_dtypes(loaded["peftkit"])
    assert dtypes == _adapter_dtypes(loaded["peft"])
    assert set(dtypes.values()) == {torch.float32 if autocast else dtype}
    with torch.no_grad():
        out = {name: model(**model_inputs("llama")).logits.float() for name, model in loaded.items()}
    torch.testing.assert_close(out["peftkit"], out["peft"], atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_tuner_prefix_matches_reference(case: str) -> None:
    """``model.prefix`` (what PEFT code filters adapter parameters by) is the reference's."""
    prefixes = {name: lib.get_peft_model(build_model("llama"), _config(lib, case)).prefix for name, lib in LIBS.items()}
    assert prefixes["peftkit"] == prefixes["peft"]
    assert prefixes["peftkit"] in ("lora_", "ia3_")
