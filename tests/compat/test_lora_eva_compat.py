"""EVA (``init_lora_weights="eva"`` + ``initialize_lora_eva_weights``) against the reference: from the same model
and batches, the same redistributed ranks, rewritten config (``target_modules``, ``rank_pattern``,
``alpha_pattern``) and factors bit for bit (Llama with q/k/v sharing an input, rank_pattern, GPT-2 Conv1D, no
scaling adjustment, label masks, ``get_eva_state_dict`` on the base model); the incremental PCA step for step; an
EVA adapter saved by either library loads in the other with the same outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from peft.utils.incremental_pca import IncrementalPCA as ReferencePCA
from tests._tiny import build_model, model_output

import peftkit
from peftkit.methods.lora.incremental_pca import IncrementalPCA

LLAMA: dict[str, Any] = {
    "r": 4,
    "lora_alpha": 8,
    "target_modules": ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"],
}
CASES = [
    ("llama", LLAMA, {"rho": 2.0, "tau": 0.9}),
    ("llama", {**LLAMA, "rank_pattern": {"down_proj": 2}}, {"rho": 1.5, "tau": 0.8, "adjust_scaling_factors": False}),
    ("gpt2", {"r": 3, "target_modules": ["c_attn", "c_fc"]}, {"tau": 0.9}),
]


def _batches(seed: int = 3, labels: bool = False) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(6):
        ids = torch.randint(0, 64, (4, 16), generator=gen)
        batch = {"input_ids": ids, "attention_mask": (torch.rand(4, 16, generator=gen) > 0.1).long()}
        if labels:
            batch["labels"] = torch.where(torch.rand(4, 16, generator=gen) > 0.3, ids, -100)
        out.append(batch)
    return out


def _eva_model(lib: Any, kind: str, fields: dict[str, Any], eva: dict[str, Any], labels: bool = False) -> Any:
    config = lib.LoraConfig(init_lora_weights="eva", eva_config=lib.EvaConfig(**eva), **fields)
    model = lib.get_peft_model(build_model(kind), config)
    lib.initialize_lora_eva_weights(model, _batches(labels=labels), show_progress_bar=False)
    return model


def _assert_same(ref: Any, kit: Any) -> None:
    ref_config, kit_config = ref.peft_config["default"], kit.peft_config["default"]
    assert kit_config.rank_pattern == ref_config.rank_pattern
    assert kit_config.alpha_pattern == ref_config.alpha_pattern
    assert sorted(kit_config.target_modules) == sorted(ref_config.target_modules)
    ref_state, kit_state = ref.state_dict(), kit.state_dict()
    assert ref_state.keys() == kit_state.keys()
    for key, value in ref_state.items():
        torch.testing.assert_close(kit_state[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize(("kind", "fields", "eva"), CASES, ids=["llama", "rank_pattern", "gpt2"])
def test_same_ranks_config_and_factors_as_the_reference(kind: str, fields: dict[str, Any], eva: dict[str, Any]) -> None:
    _assert_same(_eva_model(peft, kind, fields, eva), _eva_model(peftkit, kind, fields, eva))


def test_label_mask_and_precomputed_state_dict_match_the_reference() -> None:
    eva = {"tau": 0.9, "rho": 2.0}
    _assert_same(_eva_model(peft, "llama", LLAMA, eva, labels=True), _eva_model(peftkit, "llama", LLAMA, eva, True))
    states = []
    for lib in (peft, peftkit):
        config = lib.LoraConfig(init_lora_weights="eva", eva_config=lib.EvaConfig(**eva), **LLAMA)
        states.append(lib.get_eva_state_dict(build_model("llama"), _batches(), config, show_progress_bar=False))
    assert states[0].keys() == states[1].keys()
    for name, factor in states[0].items():
        torch.testing.assert_close(states[1][name], factor, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("lowrank", [False, True])
def test_incremental_pca_matches_the_reference_step_for_step(lowrank: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    ours, theirs = (
        IncrementalPCA(5, lowrank=lowrank, lowrank_seed=42),
        ReferencePCA(5, lowrank=lowrank, lowrank_seed=42),
    )
    mix = torch.randn(12, 12, generator=gen)
    for _ in range(4):
        batch = torch.randn(20, 12, generator=gen) @ mix
        ours.partial_fit(batch)
        theirs.partial_fit(batch)
        for attr in ("components_", "singular_values_", "explained_variance_ratio_", "mean_", "var_"):
            torch.testing.assert_close(getattr(ours, attr), getattr(theirs, attr), rtol=0, atol=0, msg=attr)


@pytest.mark.parametrize("saver", ["peft", "peftkit"])
def test_saved_adapters_load_in_the_other_library(saver: str, tmp_path: Path) -> None:
    save_lib, load_lib = (peft, peftkit) if saver == "peft" else (peftkit, peft)
    model = _eva_model(save_lib, "llama", {**LLAMA, "rank_pattern": {"down_proj": 2}}, {"tau": 0.9})
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.1 * torch.randn_like(param))
    ids = {"input_ids": _batches(9)[0]["input_ids"]}
    expected = model_output(model, ids)
    model.save_pretrained(tmp_path)
    loaded = load_lib.PeftModel.from_pretrained(build_model("llama"), tmp_path)
    torch.testing.assert_close(model_output(loaded, ids), expected, rtol=1e-5, atol=1e-6)
    assert loaded.peft_config["default"].rank_pattern == model.peft_config["default"].rank_pattern
