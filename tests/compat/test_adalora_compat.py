"""AdaLoRA compatibility with the reference peft 0.21.2: adapters saved by one library load in the other with
the same outputs (unmerged and merged), before and after rank allocation (a pruned ``rank_pattern`` saves
truncated tensors and loading resizes to it); both libraries save the same files, count the same
parameters, and, started from the same weights, allocate the same ranks."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from tests._tiny import build_model, model_inputs, model_output
from tests.compat._cross import ATOL, LIBS, Adapter, compat_tests, saved_files

SCHEDULE = {"total_step": 12, "tinit": 2, "tfinal": 4, "init_r": 4, "target_r": 2, "task_type": "CAUSAL_LM"}


def allocate(model: Any, steps: int) -> list[float]:
    """``steps`` SGD steps on one batch, calling ``update_and_allocate`` after each (PEFT's documented loop)."""
    ids = model_inputs("llama")["input_ids"]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    losses = []
    for step in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        model.base_model.update_and_allocate(step)
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def allocated(steps: int) -> Any:
    def train(model: Any, lib: ModuleType) -> None:
        allocate(model, steps)

    return train


PLAIN = [
    Adapter("llama_defaults", "AdaLoraConfig", SCHEDULE),  # q_proj, v_proj
    Adapter("gpt2_defaults", "AdaLoraConfig", SCHEDULE, model="gpt2"),  # Conv1D c_attn, fan_in_fan_out
    Adapter(
        "conv2d",
        "AdaLoraConfig",
        {"total_step": 5, "init_r": 3, "target_r": 1, "target_modules": ["conv", "lin"]},
        "convnet",
    ),
    Adapter("alpha_zero_named", "AdaLoraConfig", {**SCHEDULE, "lora_alpha": 0}, name="other"),
]
ALLOCATED = [
    Adapter("mid_budget", "AdaLoraConfig", SCHEDULE, train=allocated(5)),  # some ranks pruned
    Adapter("final_budget", "AdaLoraConfig", SCHEDULE, train=allocated(12)),  # target_r per layer, frozen
]

pytestmark = pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to False:UserWarning")


test_cross_load, test_saved_files_and_parameter_counts_match = compat_tests(PLAIN + ALLOCATED, PLAIN)


def test_same_start_gives_same_training_allocation_and_files(tmp_path: Path) -> None:
    """Both libraries load one random adapter, train it identically and must agree step by step."""
    Adapter("start", "AdaLoraConfig", SCHEDULE).create(LIBS["peft"]).save_pretrained(tmp_path / "start")
    models, losses = {}, {}
    for name, lib in LIBS.items():
        models[name] = lib.PeftModel.from_pretrained(build_model("llama"), tmp_path / "start", is_trainable=True)
        losses[name] = allocate(models[name], 12)
    torch.testing.assert_close(losses["peftkit"], losses["peft"], atol=ATOL, rtol=0)
    ours = models["peftkit"].peft_config["default"].rank_pattern
    theirs = {k.removesuffix(".default"): v for k, v in models["peft"].peft_config["default"].rank_pattern.items()}
    assert ours == theirs and sum(map(sum, ours.values())) == 2 * 4
    for name, model in models.items():
        model.save_pretrained(tmp_path / name)
    assert saved_files(tmp_path / "peftkit") == saved_files(tmp_path / "peft")
    inputs = model_inputs("llama")
    expected = model_output(models["peft"].eval(), inputs)
    torch.testing.assert_close(model_output(models["peftkit"].eval(), inputs), expected, atol=ATOL, rtol=0)


def test_pruned_adapter_with_alpha_zero_loads_as_peft_loads_it(tmp_path: Path) -> None:
    """With ``lora_alpha <= 0`` the scaling is the layer's rank; after loading a pruned adapter the reference
    takes the *kept* rank (so its reload differs from the trained model), and peftkit loads it the same way."""
    adapter = Adapter("alpha_zero", "AdaLoraConfig", {**SCHEDULE, "lora_alpha": 0}, train=allocated(12))
    trained = adapter.create(LIBS["peft"])
    trained.save_pretrained(tmp_path)
    inputs = model_inputs("llama")
    theirs, ours = (model_output(adapter.load(lib, tmp_path)[0], inputs) for lib in LIBS.values())
    assert not torch.allclose(theirs, model_output(trained, inputs), atol=1e-3)
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)
