"""PiSSA / OLoRA adapters saved as plain LoRA of the original base (``path_initial_model_for_weight_conversion``):
the converted file loads on the untouched base with the trained model's outputs, and equals the reference's."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import peftkit
from peftkit.errors import ConfigError, UnsupportedError

peft = pytest.importorskip("peft")


def _base() -> nn.Module:
    torch.manual_seed(0)
    layers = OrderedDict(emb=nn.Embedding(20, 16), lin0=nn.Linear(16, 24), act=nn.ReLU(), lin1=nn.Linear(24, 8))
    return nn.Sequential(layers)


def _train(model: nn.Module) -> None:
    """Stand-in for training: every adapter factor moves by a fresh random step (same order in both libraries)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "lora_" in name:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))


def _convert(lib: object, tmp: Path, **options: object) -> tuple[torch.Tensor, Path]:
    config = lib.LoraConfig(r=4, lora_alpha=8, target_modules=["lin0", "lin1"], **options)  # type: ignore[attr-defined]
    model = lib.get_peft_model(_base(), config)  # type: ignore[attr-defined]
    model.save_pretrained(tmp / "initial")
    _train(model)
    tokens = torch.randint(0, 20, (3, 5), generator=torch.Generator().manual_seed(2))
    expected = model(tokens).detach()
    model.save_pretrained(tmp / "lora", path_initial_model_for_weight_conversion=str(tmp / "initial"))
    return expected, tmp / "lora"


@pytest.mark.parametrize("init", ["pissa", "olora"])
@pytest.mark.parametrize("use_rslora", [False, True])
def test_converted_adapter_matches_reference_and_trained_model(tmp_path: Path, init: str, use_rslora: bool) -> None:
    options = {"init_lora_weights": init, "use_rslora": use_rslora}
    expected, ours = _convert(peftkit, tmp_path / "kit", **options)
    _, theirs = _convert(peft, tmp_path / "ref", **options)

    mine, reference = load_file(ours / "adapter_model.safetensors"), load_file(theirs / "adapter_model.safetensors")
    assert mine.keys() == reference.keys()
    for key in mine:
        torch.testing.assert_close(mine[key], reference[key], rtol=1e-5, atol=1e-6)
    saved = json.loads((ours / "adapter_config.json").read_text())
    assert saved["r"] == 8 and saved["init_lora_weights"] is True
    assert saved["lora_alpha"] == pytest.approx(json.loads((theirs / "adapter_config.json").read_text())["lora_alpha"])

    tokens = torch.randint(0, 20, (3, 5), generator=torch.Generator().manual_seed(2))
    for lib in (peft, peftkit):  # the original base plus the converted adapter computes the trained model
        loaded = lib.PeftModel.from_pretrained(_base(), ours)
        torch.testing.assert_close(loaded(tokens), expected, rtol=1e-4, atol=1e-5)


def test_embedding_factors_are_converted_too(tmp_path: Path) -> None:
    """Embedding factors (``lora_embedding_A/B``, which PEFT's conversion leaves as they are) concatenate too;
    a plain LoRA start (``init_lora_weights=True``) converts to the same update."""
    config = peftkit.LoraConfig(r=4, lora_alpha=8, target_modules=["emb", "lin0"])
    model = peftkit.get_peft_model(_base(), config)
    model.save_pretrained(tmp_path / "initial")
    _train(model)
    tokens = torch.randint(0, 20, (3, 5), generator=torch.Generator().manual_seed(2))
    expected = model(tokens).detach()
    model.save_pretrained(tmp_path / "lora", path_initial_model_for_weight_conversion=str(tmp_path / "initial"))
    loaded = peftkit.PeftModel.from_pretrained(_base(), tmp_path / "lora")
    torch.testing.assert_close(loaded(tokens), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"init_lora_weights": "pissa", "use_dora": True}, UnsupportedError),
        ({"init_lora_weights": "pissa", "use_rslora": True, "rank_pattern": {"lin0": 2}}, ConfigError),
    ],
)
def test_unconvertible_adapters_are_refused_before_writing(tmp_path: Path, options: dict, error: type) -> None:
    model = peftkit.get_peft_model(_base(), peftkit.LoraConfig(r=4, target_modules=["lin0", "lin1"], **options))
    model.save_pretrained(tmp_path / "initial")
    with pytest.raises(error, match="path_initial_model_for_weight_conversion"):
        model.save_pretrained(tmp_path / "lora", path_initial_model_for_weight_conversion=str(tmp_path / "initial"))
    assert not (tmp_path / "lora").exists()


def test_mismatched_initial_adapter_is_refused(tmp_path: Path) -> None:
    other = peftkit.get_peft_model(_base(), peftkit.LoraConfig(r=2, target_modules=["lin0", "lin1"]))
    other.save_pretrained(tmp_path / "initial")
    model = peftkit.get_peft_model(
        _base(), peftkit.LoraConfig(r=4, target_modules=["lin0", "lin1"], init_lora_weights="pissa")
    )
    with pytest.raises(peftkit.errors.CheckpointError, match="does not match the trained one"):
        model.save_pretrained(tmp_path / "lora", path_initial_model_for_weight_conversion=str(tmp_path / "initial"))
    assert not (tmp_path / "lora").exists()


def test_plain_lora_init_warns(tmp_path: Path) -> None:
    model = peftkit.get_peft_model(
        _base(), peftkit.LoraConfig(r=4, target_modules=["lin0"], init_lora_weights="gaussian")
    )
    model.save_pretrained(tmp_path / "initial")
    with pytest.warns(UserWarning, match="PiSSA / OLoRA"):
        model.save_pretrained(tmp_path / "lora", path_initial_model_for_weight_conversion=str(tmp_path / "initial"))
