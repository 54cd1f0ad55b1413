"""Trainer with peftkit models (in place via add_adapter, and PeftModel): adapter-only checkpoints, resume that
reproduces the uninterrupted run's losses step by step, several adapters checkpointed and restored with
their trainability, and load_best_model_at_end."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file
from tests.integration._transformers_fixtures import (  # noqa: F401 (fixture)
    STYLES,
    TokenDataset,
    adapter_weights,
    lora,
    losses,
    patched,
    trainer_args,
)
from torch import nn
from transformers import Trainer

MANIFEST = "adapter_checkpoint.json"


@pytest.mark.parametrize("style", sorted(STYLES))
def test_resume_reproduces_losses_step_by_step(patched, style: str, tmp_path) -> None:  # noqa: F811
    full = Trainer(model=STYLES[style](), args=trainer_args(tmp_path / "full"), train_dataset=TokenDataset())
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-4"
    files = sorted(os.listdir(checkpoint))
    assert "adapter_model.safetensors" in files and MANIFEST in files
    assert not {"model.safetensors", "pytorch_model.bin"} & set(files)
    stored = load_file(checkpoint / "adapter_model.safetensors")
    assert stored and all(".lora_" in key for key in stored)

    resumed_model = STYLES[style](adapter_seed=123)  # a different starting adapter: the checkpoint must win
    resumed = Trainer(model=resumed_model, args=trainer_args(tmp_path / "resumed"), train_dataset=TokenDataset())
    resumed.train(resume_from_checkpoint=str(checkpoint))
    uninterrupted, continued = losses(full), losses(resumed)
    print(f"\n[{style}] uninterrupted losses: {[uninterrupted[s] for s in sorted(uninterrupted)]}")
    print(f"[{style}] resumed from step 4:  {[continued[s] for s in sorted(continued) if s > 4]}")
    assert sorted(uninterrupted) == list(range(1, 9)) and sorted(continued) == list(range(1, 9))
    for step in range(5, 9):
        assert continued[step] == pytest.approx(uninterrupted[step], abs=1e-6), step
    final, again = adapter_weights(full.model), adapter_weights(resumed_model)
    assert final.keys() == again.keys()
    for name in final:
        torch.testing.assert_close(again[name], final[name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("style", sorted(STYLES))
def test_several_adapters_come_back_with_their_trainability(patched, style: str, tmp_path) -> None:  # noqa: F811
    def build(seed: int, with_second: bool = True) -> nn.Module:
        model = STYLES[style](adapter_seed=seed)
        if not with_second:
            return model
        torch.manual_seed(seed + 1)
        if style == "inplace":
            model.add_adapter(lora(r=2), adapter_name="second")
            model.set_adapter("default")  # "second" stays, inactive and frozen
        else:
            model.add_adapter("second", lora(r=2))
        return model

    model = build(0)
    run_args = trainer_args(tmp_path / "run", max_steps=2, save_steps=2)
    Trainer(model=model, args=run_args, train_dataset=TokenDataset()).train()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    assert sorted(os.listdir(checkpoint / "second")) == ["adapter_config.json", "adapter_model.safetensors"]
    saved_second = {k: v for k, v in adapter_weights(model).items() if ".second." in k}
    for fresh in (build(50), build(60, with_second=False)):
        trainer = Trainer(
            model=fresh, args=trainer_args(tmp_path / "again", max_steps=3, save_steps=10), train_dataset=TokenDataset()
        )
        trainer.train(resume_from_checkpoint=str(checkpoint))
        weights = {n: p for n, p in fresh.named_parameters() if ".lora_" in n}
        assert {n for n, p in weights.items() if p.requires_grad} == {n for n in weights if ".default." in n}
        for name, value in saved_second.items():
            torch.testing.assert_close(weights[name].detach(), value)
        active = fresh.active_adapters() if style == "inplace" else fresh.active_adapters
        assert list(active) == ["default"]


@pytest.mark.parametrize("style", sorted(STYLES))
def test_load_best_model_at_end(patched, style: str, tmp_path) -> None:  # noqa: F811
    model = STYLES[style]()
    evaluations = iter(range(100, 0, -1))  # each evaluation scores lower: the first checkpoint is the best

    def score(_: object) -> dict[str, float]:
        return {"order": float(next(evaluations))}

    trainer = Trainer(
        model=model,
        args=trainer_args(
            tmp_path / "run",
            max_steps=6,
            save_steps=2,
            eval_strategy="steps",
            eval_steps=2,
            load_best_model_at_end=True,
            metric_for_best_model="order",
            greater_is_better=True,
        ),
        train_dataset=TokenDataset(),
        eval_dataset=TokenDataset(n=4, seed=1),
        compute_metrics=score,
    )
    trainer.train()
    best, last = trainer.state.best_model_checkpoint, str(tmp_path / "run" / "checkpoint-6")
    assert best is not None and os.path.basename(best) == "checkpoint-2"
    for name, value in adapter_weights(model).items():  # both styles save PEFT's keys
        key = "base_model.model." + name.removeprefix("base_model.model.").replace(".default.", ".")
        torch.testing.assert_close(value, load_file(os.path.join(best, "adapter_model.safetensors"))[key])
        assert not torch.equal(value, load_file(os.path.join(last, "adapter_model.safetensors"))[key])
