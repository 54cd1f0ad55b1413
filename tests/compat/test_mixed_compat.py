"""Mixed-method models (``PeftMixedModel``, ``get_peft_model(..., mixed=True)``) against the reference peft 0.21.2:
the same stacked layers (identical state-dict keys and shapes), trainable tensors and parameter counts, and the
same outputs with any subset of LoRA / LoHa / LoKr adapters active, disabled, merged, unmerged, unloaded, after a
delete, and when adapters saved separately are combined with ``from_pretrained`` + ``load_adapter``."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import peft
import pytest
import torch
from tests._tiny import build_model, model_inputs, model_output, randomise_adapter

import peftkit

LIBS = {"peft": peft, "peftkit": peftkit}
ATOL = 1e-5
# name -> (config class, fields); q_proj gets LoRA, LoHa, then a second LoRA on top (three stacked layers).
ADAPTERS: dict[str, tuple[str, dict[str, Any]]] = {
    "default": ("LoraConfig", {"target_modules": ["q_proj", "v_proj"], "init_lora_weights": False}),
    "loha": ("LoHaConfig", {"target_modules": ["q_proj", "o_proj"], "r": 2, "init_weights": False}),
    "lokr": ("LoKrConfig", {"target_modules": ["v_proj", "down_proj"], "r": 2, "init_weights": False}),
    "lora2": ("LoraConfig", {"target_modules": ["q_proj"], "r": 2, "init_lora_weights": False}),
}
SUBSETS = [["default", "loha", "lokr", "lora2"], ["loha"], ["default", "lokr"], ["lora2", "loha"]]


def config(lib: ModuleType, name: str) -> Any:
    cls, fields = ADAPTERS[name]
    return getattr(lib, cls)(**fields)


def mixed(lib: ModuleType) -> Any:
    """Every adapter of :data:`ADAPTERS` added to one mixed model, all active."""
    torch.manual_seed(0)
    model = lib.get_peft_model(build_model("llama"), config(lib, "default"), mixed=True)
    for name in list(ADAPTERS)[1:]:
        model.add_adapter(name, config(lib, name))
    model.set_adapter(list(ADAPTERS))
    return model.eval()


def both() -> tuple[Any, Any]:
    """The reference's mixed model and peftkit's, holding the same (random) weights."""
    reference, ours = mixed(peft), mixed(peftkit)
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def assert_same_output(reference: Any, ours: Any, subset: list[str], x: dict[str, Any], base: torch.Tensor) -> Any:
    """Activate ``subset`` in both mixed models; peftkit's output equals the reference's, which differs from
    ``base``. Returns the reference's output."""
    reference.set_adapter(subset)
    ours.set_adapter(subset)
    expected = model_output(reference, x)
    assert not torch.allclose(expected, base, atol=1e-3)
    torch.testing.assert_close(model_output(ours, x), expected, atol=ATOL, rtol=0, msg=str(subset))
    return expected


def test_same_layers_trainable_tensors_and_counts(capsys: pytest.CaptureFixture[str]) -> None:
    reference, ours = mixed(peft), mixed(peftkit)
    theirs, mine = reference.state_dict(), ours.state_dict()
    assert sorted(mine) == sorted(theirs)
    assert all(mine[k].shape == theirs[k].shape for k in theirs)
    q_proj = "base_model.model.model.layers.0.self_attn.q_proj"  # LoRA(lora2) > LoHa > LoRA(default) > Linear
    assert {f"{q_proj}.lora_A.lora2.weight", f"{q_proj}.base_layer.hada_w1_a.loha"} <= set(mine)
    assert f"{q_proj}.base_layer.base_layer.lora_A.default.weight" in mine

    def trainable(model: Any) -> set[str]:
        return {n for n, p in model.named_parameters() if p.requires_grad}

    assert trainable(ours) == trainable(reference)
    printed = []
    for model in (reference, ours):
        capsys.readouterr()
        model.print_trainable_parameters()
        printed.append(capsys.readouterr().out)
    assert printed[0] == printed[1]


def test_outputs_for_every_subset_disabled_merged_and_deleted() -> None:
    reference, ours = both()
    x = model_inputs("llama")
    base = model_output(build_model("llama"), x)
    for subset in SUBSETS:
        expected = assert_same_output(reference, ours, subset, x, base)
    with ours.disable_adapter():
        torch.testing.assert_close(model_output(ours, x), base, atol=0, rtol=0)
    ours.base_model.merge_adapter()
    torch.testing.assert_close(model_output(ours, x), expected, atol=ATOL, rtol=0)
    ours.base_model.unmerge_adapter()
    torch.testing.assert_close(model_output(ours, x), expected, atol=ATOL, rtol=0)
    for model in (reference, ours):
        model.delete_adapter("loha")
        model.set_adapter(["default", "lokr", "lora2"])
    torch.testing.assert_close(model_output(ours, x), model_output(reference, x), atol=ATOL, rtol=0)
    merged = ours.merge_and_unload()
    assert [type(m) for m in merged.modules()] == [type(m) for m in build_model("llama").modules()]
    torch.testing.assert_close(model_output(merged, x), model_output(reference, x), atol=ATOL, rtol=0)


def test_unload_gives_back_the_base() -> None:
    _, ours = both()
    x = model_inputs("llama")
    plain = ours.unload()
    assert [type(m) for m in plain.modules()] == [type(m) for m in build_model("llama").modules()]
    torch.testing.assert_close(model_output(plain, x), model_output(build_model("llama"), x), atol=0, rtol=0)


def assert_separate_files_combine_alike(
    tmp_path: Path, configs: dict[str, Any], subsets: list[list[str]], merge: bool = True
) -> None:
    """Save one adapter per config of ``configs`` (file name -> reference config) with the reference; both
    libraries combine them (the first as ``lora``, the others by file name) in a ``PeftMixedModel`` with the
    same outputs for each of ``subsets`` (and merged, with ``merge``)."""
    for name, adapter_config in configs.items():
        torch.manual_seed(0)
        single = peft.get_peft_model(build_model("llama"), adapter_config)
        randomise_adapter(single)
        single.save_pretrained(tmp_path / name)
    x = model_inputs("llama")
    first, *rest = configs
    outputs: dict[str, list[torch.Tensor]] = {}
    for lib_name, lib in LIBS.items():
        model = lib.PeftMixedModel.from_pretrained(build_model("llama"), tmp_path / first, adapter_name="lora")
        for name in rest:
            model.load_adapter(tmp_path / name, name)
        runs = []
        for subset in subsets:
            model.set_adapter(subset)
            runs.append(model_output(model, x))
        if merge:
            runs.append(model_output(model.merge_and_unload(), x))
        outputs[lib_name] = runs
    for expected, actual in zip(outputs["peft"], outputs["peftkit"], strict=True):
        torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


def test_adapters_saved_separately_combine_in_both_libraries(tmp_path: Path) -> None:
    configs = {name: config(peft, name) for name in ("default", "loha", "lokr")}
    assert_separate_files_combine_alike(tmp_path, configs, [["lora", "loha", "lokr"], ["loha", "lokr"], ["lora"]])
