"""CorDA (``init_lora_weights="corda"`` after ``preprocess_corda``) against the reference: from the same model and
calibration data, the same factors and residual base weights, bit for bit (IPM and KPM, rank_pattern, alpha, GPT-2
Conv1D); cache and covariance files written by either library are read by the other; an adapter saved by peftkit
loads in the reference (and the reverse) with the same outputs, plainly (on a preprocessed base, as the reference
requires) and converted with ``path_initial_model_for_weight_conversion`` (on the original base)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from peft.tuners.lora.corda import preprocess_corda as reference_preprocess
from peftkit.tuners.lora.corda import preprocess_corda
from tests._tiny import build_model, model_output
from torch import nn

import peftkit

LLAMA: dict[str, Any] = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]}
CASES = [
    ("llama", "ipm", LLAMA),
    ("llama", "kpm", LLAMA),
    ("llama", "ipm", {**LLAMA, "rank_pattern": {"down_proj": 2}, "alpha_pattern": {"q_proj": 3}}),
    ("gpt2", "kpm", {"r": 4, "target_modules": ["c_attn", "c_fc"]}),
]


def _calibration(seed: int = 5) -> list[torch.Tensor]:
    """Batches of one sequence (the reference's covariance hook takes ``(tokens, in)`` after squeezing)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 64, (1, 12), generator=gen) for _ in range(4)]


def _runner(model: nn.Module) -> Any:
    return lambda: [model(input_ids=ids) for ids in _calibration()]


def _corda(lib: Any, kind: str, method: str, fields: dict[str, Any], **corda: Any) -> tuple[nn.Module, Any]:
    """A model of ``kind`` preprocessed by ``lib`` and its LoRA config."""
    config_cls = peft.tuners.lora.config.CordaConfig if lib is peft else peftkit.CordaConfig
    config = lib.LoraConfig(init_lora_weights="corda", corda_config=config_cls(corda_method=method, **corda), **fields)
    model = build_model(kind)
    (reference_preprocess if lib is peft else preprocess_corda)(model, config, run_model=_runner(model))
    return model, config


def _all_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach() for name, t in model.state_dict().items()}


@pytest.mark.parametrize(("kind", "method", "fields"), CASES, ids=lambda c: str(c) if isinstance(c, str) else None)
def test_same_factors_and_residual_base_as_the_reference(kind: str, method: str, fields: dict[str, Any]) -> None:
    ref_model, ref_config = _corda(peft, kind, method, fields)
    kit_model, kit_config = _corda(peftkit, kind, method, fields)
    ref = peft.get_peft_model(ref_model, ref_config)
    kit = peftkit.get_peft_model(kit_model, kit_config)
    ref_tensors, kit_tensors = _all_tensors(ref), _all_tensors(kit)
    assert ref_tensors.keys() == kit_tensors.keys()
    for name, tensor in ref_tensors.items():
        torch.testing.assert_close(kit_tensors[name], tensor, rtol=0, atol=0, msg=name)
    ids = _calibration(9)[0]
    torch.testing.assert_close(
        model_output(kit, {"input_ids": ids}), model_output(build_model(kind), {"input_ids": ids})
    )


@pytest.mark.parametrize("writer", ["peft", "peftkit"])
def test_cache_and_covariance_files_are_read_by_the_other_library(writer: str, tmp_path: Path) -> None:
    files = {"cache_file": str(tmp_path / "eigens.pt"), "covariance_file": str(tmp_path / "cov.pt")}
    write_lib, read_lib = (peft, peftkit) if writer == "peft" else (peftkit, peft)
    written, config = _corda(write_lib, "llama", "kpm", LLAMA, **files)
    expected = _all_tensors(write_lib.get_peft_model(written, config))
    for only in ("cache_file", "covariance_file"):
        config_cls = peft.tuners.lora.config.CordaConfig if read_lib is peft else peftkit.CordaConfig
        corda = config_cls(corda_method="kpm", **{only: files[only]})
        read_config = read_lib.LoraConfig(init_lora_weights="corda", corda_config=corda, **LLAMA)
        model = build_model("llama")
        (reference_preprocess if read_lib is peft else preprocess_corda)(model, read_config)  # no run_model: files
        got = _all_tensors(read_lib.get_peft_model(model, read_config))
        for name, tensor in expected.items():
            torch.testing.assert_close(got[name], tensor, rtol=0, atol=0, msg=f"{only}: {name}")


def _trained(lib: Any, tmp_path: Path) -> nn.Module:
    """A CorDA adapter moved away from its start, its initial state saved in ``tmp_path / "init"``."""
    model, config = _corda(lib, "llama", "ipm", LLAMA)
    adapted = lib.get_peft_model(model, config)
    adapted.peft_config["default"].init_lora_weights = True
    adapted.save_pretrained(tmp_path / "init")
    adapted.peft_config["default"].init_lora_weights = "corda"
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if "lora_" in name:
                param.add_(0.05 * torch.randn_like(param))
    return adapted


@pytest.mark.parametrize("saver", ["peft", "peftkit"])
def test_saved_adapters_load_in_the_other_library(saver: str, tmp_path: Path) -> None:
    save_lib, load_lib = (peft, peftkit) if saver == "peft" else (peftkit, peft)
    torch.manual_seed(0)
    adapted = _trained(save_lib, tmp_path)
    ids = {"input_ids": _calibration(11)[0]}
    expected = model_output(adapted, ids)
    adapted.save_pretrained(tmp_path / "plain")
    adapted.save_pretrained(tmp_path / "converted", path_initial_model_for_weight_conversion=tmp_path / "init")
    # the plain save re-runs CorDA at load (the base must carry the same decomposition); the converted one is a
    # plain LoRA of twice the rank on the original base
    loader_base, _ = _corda(load_lib, "llama", "ipm", LLAMA)
    plain = load_lib.PeftModel.from_pretrained(loader_base, tmp_path / "plain")
    torch.testing.assert_close(model_output(plain, ids), expected, rtol=1e-5, atol=1e-5)
    converted = load_lib.PeftModel.from_pretrained(build_model("llama"), tmp_path / "converted")
    assert converted.peft_config["default"].r == 2 * LLAMA["r"]
    torch.testing.assert_close(model_output(converted, ids), expected, rtol=1e-5, atol=1e-5)
