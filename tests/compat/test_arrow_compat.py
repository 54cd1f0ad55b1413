"""Arrow routing against the reference: the same experts (saved by either library) give the same logits through
``create_arrow_model`` in both, with and without GenKnowSub, on GPT-2 ``Conv1D`` and Llama ``Linear`` layers, also
when an expert arrives after the router (before and after a first forward); the router's saved config matches."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import peft
import pytest
import torch
from tests._tiny import build_model, model_inputs, model_output
from tests.compat._cross import LIBS

TARGETS = {"gpt2": ["c_attn", "c_fc"], "llama": ["q_proj", "v_proj", "down_proj"]}


def save_experts(lib: ModuleType, kind: str, directory: Path, count: int) -> list[str]:
    """``count`` random rank-4 LoRA experts of ``kind``'s tiny model, saved by ``lib``."""
    paths = []
    for i in range(count):
        config = lib.LoraConfig(r=4, lora_alpha=6 + i, target_modules=TARGETS[kind], init_lora_weights=False)
        base = build_model(kind)  # seeds the global generator itself
        torch.manual_seed(100 + i)
        model = lib.get_peft_model(base, config)
        model.save_pretrained(directory / f"expert{i}")
        paths.append(str(directory / f"expert{i}"))
    return paths


def arrow_logits(lib: ModuleType, kind: str, experts: list[str], general: list[str] | None, **options: Any) -> Any:
    model = lib.create_arrow_model(
        build_model(kind), experts, lib.ArrowConfig(rng_seed=7, **options), general_adapter_paths=general
    )
    return model_output(model.eval(), model_inputs(kind))


@pytest.mark.parametrize("saver", ["peft", "peftkit"])
@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("gpt2", {"top_k": 2}),
        ("gpt2", {"top_k": 3, "router_temperature": 0.3, "use_gks": True}),
        ("llama", {"top_k": 1}),
        ("llama", {"top_k": 2, "use_gks": True}),
    ],
    ids=["gpt2-top2", "gpt2-gks-temperature", "llama-top1", "llama-gks"],
)
def test_same_experts_give_the_reference_logits(saver: str, kind: str, options: dict, tmp_path: Path) -> None:
    paths = save_experts(LIBS[saver], kind, tmp_path, 5)
    general = paths[3:] if options.get("use_gks") else None
    theirs = arrow_logits(peft, kind, paths[:3], general, **options)
    ours = arrow_logits(LIBS["peftkit"], kind, paths[:3], general, **options)
    assert not torch.allclose(theirs, model_output(build_model(kind), model_inputs(kind)), atol=1e-3)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("forward_first", [False, True])
def test_an_expert_added_later_routes_as_the_reference(forward_first: bool, tmp_path: Path) -> None:
    paths = save_experts(peft, "gpt2", tmp_path, 4)
    inputs = model_inputs("gpt2")
    outputs = []
    for lib in LIBS.values():
        model = lib.create_arrow_model(
            build_model("gpt2"),
            paths[:2],
            lib.ArrowConfig(top_k=2, use_gks=True, rng_seed=3),
            general_adapter_paths=paths[3:],
        ).eval()
        if forward_first:
            model_output(model, inputs)
        model.load_adapter(paths[2], adapter_name="late_expert")
        outputs.append(model_output(model, inputs))
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=1e-5)


def test_router_config_matches_the_reference(tmp_path: Path) -> None:
    paths = save_experts(peft, "gpt2", tmp_path, 3)
    written = {}
    for name, lib in LIBS.items():
        model = lib.create_arrow_model(
            build_model("gpt2"),
            paths[:2],
            lib.ArrowConfig(top_k=2, use_gks=True, rng_seed=1),
            general_adapter_paths=paths[2:],
        )
        model.save_pretrained(tmp_path / name, selected_adapters=["arrow_router"])
        config = json.loads((tmp_path / name / "arrow_router" / "adapter_config.json").read_text())
        written[name] = (config["arrow_config"], sorted(config["target_modules"]), config["r"])
    assert written["peftkit"] == written["peft"]


def test_float16_base_without_adapter_autocast(tmp_path: Path) -> None:
    """Experts kept in float16 (``autocast_adapter_dtype=False`` passed through to the loads): same logits, and the
    router refuses to merge in both."""
    paths = save_experts(peft, "gpt2", tmp_path, 3)
    outputs = []
    for lib in LIBS.values():
        model = lib.create_arrow_model(
            build_model("gpt2").to(torch.float16),
            paths,
            lib.ArrowConfig(top_k=2, rng_seed=0),
            autocast_adapter_dtype=False,
        ).eval()
        assert model.base_model.model.transformer.h[0].attn.c_attn.lora_A["task_0"].weight.dtype == torch.float16
        outputs.append(model_output(model, model_inputs("gpt2")))
        with pytest.raises(RuntimeError):
            model.merge_adapter()
    assert outputs[1].dtype == outputs[0].dtype == torch.float16
    torch.testing.assert_close(outputs[1], outputs[0], atol=2e-3, rtol=2e-3)
