"""Prompt methods whose file holds only the encoder's output (P-tuning, prefix tuning with projection) under the
Trainer: checkpoints keep the whole encoder in a side file, resuming equals an uninterrupted run, the best
checkpoint comes back, the exported adapter is exactly PEFT's format, and a saved adapter loads trainable."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import peft as reference
import pytest
import torch
from safetensors.torch import load_file
from tests.integration._transformers_fixtures import (  # noqa: F401 (fixture)
    TokenDataset,
    inputs_for,
    losses,
    patched,
    tiny_llama,
    trainer_args,
)
from transformers import Trainer

import peftkit
from peftkit.methods.prompt.tuner import TRAINING_STATE_NAME

CONFIGS = {
    "ptuning_mlp": lambda: peftkit.PromptEncoderConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=3, encoder_hidden_size=8
    ),
    "ptuning_lstm": lambda: peftkit.PromptEncoderConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=3, encoder_hidden_size=8, encoder_reparameterization_type="LSTM"
    ),
    "prefix_projection": lambda: peftkit.PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=8
    ),
}


def build(case: str, seed: int = 0) -> peftkit.PeftModel:
    base = tiny_llama()
    torch.manual_seed(seed)
    return peftkit.get_peft_model(base, CONFIGS[case]())


def encoder_state(model: peftkit.PeftModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.prompt_encoder["default"].state_dict().items()}


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_resume_equals_an_uninterrupted_run(patched, case, tmp_path) -> None:  # noqa: F811
    full = Trainer(model=build(case), args=trainer_args(tmp_path / "full"), train_dataset=TokenDataset())
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-4"
    assert set(load_file(checkpoint / "adapter_model.safetensors")) == {"prompt_embeddings"}  # PEFT's file
    assert TRAINING_STATE_NAME in os.listdir(checkpoint)
    resumed_model = build(case, seed=123)  # another starting encoder: the checkpoint must win
    resumed = Trainer(model=resumed_model, args=trainer_args(tmp_path / "resumed"), train_dataset=TokenDataset())
    resumed.train(resume_from_checkpoint=str(checkpoint))
    uninterrupted, continued = losses(full), losses(resumed)
    for step in range(5, 9):
        assert continued[step] == pytest.approx(uninterrupted[step], abs=1e-6), step
    final, again = encoder_state(full.model), encoder_state(resumed_model)
    for key, value in final.items():
        torch.testing.assert_close(again[key], value, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_load_best_model_at_end(patched, case, tmp_path) -> None:  # noqa: F811
    model = build(case)
    evaluations = iter(range(100, 0, -1))  # each evaluation scores lower: the first checkpoint is the best
    args = trainer_args(
        tmp_path / "run", max_steps=6, save_steps=2, eval_strategy="steps", eval_steps=2, load_best_model_at_end=True,
        metric_for_best_model="order", greater_is_better=True,
    )  # fmt: skip
    trainer = Trainer(
        model=model, args=args, train_dataset=TokenDataset(), eval_dataset=TokenDataset(n=4, seed=1),
        compute_metrics=lambda _: {"order": float(next(evaluations))},
    )  # fmt: skip
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None and os.path.basename(best) == "checkpoint-2"
    saved = load_file(os.path.join(best, TRAINING_STATE_NAME))
    for key, value in encoder_state(model).items():
        torch.testing.assert_close(value, saved[key])
    exported = load_file(os.path.join(best, "adapter_model.safetensors"))["prompt_embeddings"]
    torch.testing.assert_close(model.get_adapter_state_dict()["prompt_embeddings"], exported)


def train_loaded_table(case: str, tmp_path: Path) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Save ``case``'s adapter, load it trainable (a table of the saved vectors: same outputs), take one step
    and save it again to ``tmp_path / "again"``; returns the inputs and the trained logits."""
    trained = build(case).eval()
    inputs = inputs_for(trained)
    with torch.no_grad():
        expected = trained(**inputs).logits
    trained.save_pretrained(tmp_path / "saved")
    with pytest.warns(UserWarning, match="trainable table of virtual-token vectors"):
        loaded = peftkit.PeftModel.from_pretrained(tiny_llama(), tmp_path / "saved", is_trainable=True)
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, expected, atol=1e-5, rtol=1e-5)
    trainable = [p for p in loaded.parameters() if p.requires_grad]
    assert trainable and all(p in set(loaded.prompt_encoder.parameters()) for p in trainable)
    loaded.train()
    loss = loaded(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()
    with torch.no_grad():
        for param in trainable:
            param -= 0.5 * param.grad
    loaded.eval()
    with torch.no_grad():
        changed = loaded(**inputs).logits
    assert not torch.allclose(changed, expected, atol=1e-4)
    loaded.save_pretrained(tmp_path / "again")  # still PEFT's file
    assert set(load_file(tmp_path / "again" / "adapter_model.safetensors")) == {"prompt_embeddings"}
    return inputs, changed


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_saved_adapter_loads_trainable_with_the_saved_outputs(case, tmp_path) -> None:
    inputs, changed = train_loaded_table(case, tmp_path)
    again = peftkit.PeftModel.from_pretrained(tiny_llama(), tmp_path / "again").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(**inputs).logits, changed, atol=1e-5, rtol=1e-5)


@pytest.mark.reference_peft  # the reference's prompt methods feed transformers' forward the cache argument
@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_the_reference_reads_the_trained_table(case, tmp_path) -> None:
    inputs, changed = train_loaded_table(case, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = reference.PeftModel.from_pretrained(tiny_llama(), tmp_path / "again").eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs(**inputs).logits, changed, atol=1e-5, rtol=1e-5)
