"""LoRA-GA against the reference: from the same model, data and seed, ``preprocess_loraga`` + ``get_peft_model``
give the same factors and the same rewritten base weights (every direction and scale, Linear and Conv1D, bf16);
the gradient caches are interchangeable; an adapter saved by either library loads in the other on the LoRA-GA base
with the same outputs, merged too; saving with ``path_initial_model_for_weight_conversion`` writes the same plain
LoRA, which the other library loads on the original base; configs and files match."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import peft
import pytest
import torch
from tests._tiny import build_model, model_inputs, model_output
from tests.compat._cross import LIBS, Adapter, compat_tests, saved_files

GA_FIELDS: dict[str, Any] = {"r": 2, "init_lora_weights": "lora_ga", "lora_ga_config": {"direction": "ArBr"}}
TARGETS = {"llama": ["q_proj", "v_proj", "down_proj"], "gpt2": ["c_attn", "c_fc"]}
# Without preprocess_loraga both libraries initialise as init_lora_weights=True; the files still carry the config.
CROSS = [
    Adapter("llama", "LoraConfig", {**GA_FIELDS, "target_modules": TARGETS["llama"]}),
    Adapter("gpt2_conv1d", "LoraConfig", {**GA_FIELDS, "target_modules": TARGETS["gpt2"]}, model="gpt2"),
]
test_cross_load, test_same_files_and_counts = compat_tests(CROSS, CROSS)


def ga_model(lib: ModuleType, kind: str, options: dict[str, Any], dtype: torch.dtype = torch.float32) -> Any:
    """``kind``'s tiny model preprocessed with two batches and given a LoRA-GA adapter by ``lib`` (seeded)."""
    model = build_model(kind).to(dtype)
    config = lib.LoraConfig(
        r=2,
        lora_alpha=4,
        target_modules=TARGETS[kind],
        init_lora_weights="lora_ga",
        lora_ga_config=lib.LoraGAConfig(**options),
    )

    def train_step() -> None:
        for seed in (3, 4):
            inputs = model_inputs(kind, seed=seed)
            model(**inputs, labels=inputs["input_ids"]).loss.backward()

    torch.manual_seed(7)
    lib.preprocess_loraga(model, config, train_step)
    return lib.get_peft_model(model, config).eval()


CASES = [
    ("llama", {"direction": "ArB2r", "scale": "stable"}, torch.float32),
    ("llama", {"direction": "A2rBr", "scale": "weight_svd"}, torch.float32),
    ("llama", {"direction": "random", "scale": "gd_scale"}, torch.float32),
    ("gpt2", {"direction": "ArBr", "scale": "unit"}, torch.float32),
    ("gpt2", {"direction": "random", "scale": "stable", "stable_gamma": 4}, torch.float32),
    ("llama", {"direction": "ArB2r", "scale": "weight_svd"}, torch.bfloat16),
]


@pytest.mark.parametrize(("kind", "options", "dtype"), CASES, ids=lambda v: str(v))
def test_same_seed_gives_the_reference_factors_and_base(kind: str, options: dict[str, Any], dtype: torch.dtype) -> None:
    theirs = ga_model(peft, kind, options, dtype).state_dict()
    ours = ga_model(LIBS["peftkit"], kind, options, dtype).state_dict()
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert torch.equal(ours[key].to(value.dtype), value), key


def trained(lib: ModuleType, kind: str) -> Any:
    """A LoRA-GA model of ``lib`` whose factors then moved (as training would)."""
    model = ga_model(lib, kind, {"direction": "ArB2r", "scale": "stable"})
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_" in name:
                param.add_(0.05 * torch.randn(param.shape, generator=gen))
    return model


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize(("source", "target"), [("peft", "peftkit"), ("peftkit", "peft")])
def test_adapter_moves_both_ways_on_the_lora_ga_base(kind: str, source: str, target: str, tmp_path: Path) -> None:
    saved = trained(LIBS[source], kind)
    inputs = model_inputs(kind)
    expected = model_output(saved, inputs)
    saved.save_pretrained(tmp_path)
    base = saved.unload()  # the rewritten base weights, W - s B0 A0
    loaded = LIBS[target].PeftModel.from_pretrained(base, tmp_path).eval()
    torch.testing.assert_close(model_output(loaded, inputs), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(model_output(loaded.merge_and_unload(), inputs), expected, atol=1e-5, rtol=0)


def test_conversion_at_save_gives_the_reference_plain_lora(tmp_path: Path) -> None:
    """Both libraries write the same rank-2r plain LoRA; each library runs either's on the original base as the
    trained model ran."""
    files, expected = {}, {}
    inputs = model_inputs("llama")
    for name, lib in LIBS.items():
        start = ga_model(lib, "llama", {"direction": "ArB2r", "scale": "stable"})
        start.peft_config["default"].init_lora_weights = True  # PEFT's recipe: the initial state saved as plain LoRA
        start.save_pretrained(tmp_path / name / "initial")
        model = trained(lib, "llama")
        expected[name] = model_output(model, inputs)
        model.save_pretrained(
            tmp_path / name / "converted", path_initial_model_for_weight_conversion=str(tmp_path / name / "initial")
        )
        files[name] = saved_files(tmp_path / name / "converted")
    assert files["peftkit"] == files["peft"]
    assert files["peftkit"][0]["r"] == 4 and files["peftkit"][0]["init_lora_weights"] is True
    for source in LIBS:
        for lib in LIBS.values():
            loaded = lib.PeftModel.from_pretrained(build_model("llama"), tmp_path / source / "converted").eval()
            torch.testing.assert_close(model_output(loaded, inputs), expected[source], atol=1e-5, rtol=0)


def test_gradient_caches_are_interchangeable(tmp_path: Path) -> None:
    caches = {}
    for name, lib in LIBS.items():
        model = build_model("llama")
        config = lib.LoraConfig(
            target_modules=TARGETS["llama"], init_lora_weights="lora_ga", lora_ga_config=lib.LoraGAConfig()
        )
        inputs = model_inputs("llama")
        cache = tmp_path / f"{name}.pt"
        step = lambda m=model, x=inputs: m(**x, labels=x["input_ids"]).loss.backward()  # noqa: E731
        lib.preprocess_loraga(model, config, step, cache_file=cache)
        caches[name] = cache
    theirs, ours = (torch.load(caches[name], weights_only=True) for name in ("peft", "peftkit"))
    assert ours.keys() == theirs.keys()
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], atol=1e-7, rtol=1e-6)
