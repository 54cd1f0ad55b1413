"""MonteCLoRA (``LoraConfig(monteclora_config=MontecloraConfig())``) against the reference: files, keys (the
sampler's parameters and buffers), trainable counts and eval outputs both ways, unmerged and merged (Linear and
GPT-2 ``Conv1D``); the same variational loss on the same tensors; ``MontecloraTrainerMixin`` adds exactly it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from tests._tiny import build_model, model_inputs, randomise_adapter
from tests.compat._cross import Adapter, compat_tests
from transformers import Trainer, TrainingArguments

import peftkit
from peftkit.helpers import MontecloraTrainerMixin

LLAMA: dict[str, Any] = {"r": 4, "target_modules": ["q_proj", "down_proj"], "monteclora_config": {"num_samples": 3}}
CROSS = [
    Adapter("llama", "LoraConfig", LLAMA),
    Adapter("gpt2_conv1d", "LoraConfig", {**LLAMA, "target_modules": ["c_attn", "c_fc"]}, model="gpt2"),
    Adapter("rank_pattern", "LoraConfig", {**LLAMA, "rank_pattern": {"down_proj": 2}}, name="other"),
]
test_cross_load, test_same_files_and_counts = compat_tests(CROSS, CROSS)


def _build(lib: Any, **monteclora: Any) -> Any:
    config = lib.LoraConfig(**{**LLAMA, "monteclora_config": lib.MontecloraConfig(num_samples=3, **monteclora)})
    return lib.get_peft_model(build_model("llama"), config)


@pytest.mark.parametrize(("use_entropy", "low_cpu_mem_usage"), [(False, False), (True, True)])
def test_same_variational_loss_as_the_reference(tmp_path: Path, use_entropy: bool, low_cpu_mem_usage: bool) -> None:
    saved = _build(peft, use_entropy=use_entropy, kl_loss_weight=0.1).train()
    randomise_adapter(saved)
    saved(**model_inputs("llama"))  # a training draw: the buffers hold it
    saved.save_pretrained(tmp_path)
    loaded = peftkit.PeftModel.from_pretrained(
        build_model("llama"), tmp_path, is_trainable=True, low_cpu_mem_usage=low_cpu_mem_usage
    ).train()
    expected = saved._get_monteclora_loss()
    torch.testing.assert_close(loaded._get_monteclora_loss(), expected.detach(), atol=1e-6, rtol=1e-5)
    assert loaded._get_monteclora_loss("missing") == saved._get_monteclora_loss("missing") == 0.0
    assert loaded.eval()._get_monteclora_loss() == saved.eval()._get_monteclora_loss() == 0.0


def test_trainer_mixin_adds_the_variational_loss(tmp_path: Path) -> None:
    class MontecloraTrainer(MontecloraTrainerMixin, Trainer):  # type: ignore[misc]
        pass

    model = _build(peftkit, sample_scaler=0.0).train()  # no perturbation: the task loss is deterministic
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    inputs = model_inputs("llama")
    inputs["labels"] = inputs["input_ids"].clone()
    task = Trainer(model=model, args=args).compute_loss(model, inputs)
    total, outputs = MontecloraTrainer(model=model, args=args).compute_loss(model, inputs, return_outputs=True)
    extra = model._get_monteclora_loss()
    assert extra > 0
    torch.testing.assert_close(total, task + extra)
    torch.testing.assert_close(outputs.loss, task)
