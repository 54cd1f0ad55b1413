"""The transformers ``Trainer`` as ``peftkit train`` uses it: adapter-only checkpoints (through
:mod:`peftkit.integrations.trainer`), a tqdm bar showing the loss, and AdaLoRA's rank allocation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import ProgressCallback

from peftkit.integrations import trainer as checkpoints


class AdapterTrainer(Trainer):
    """A ``Trainer`` whose checkpoints hold the adapter files only (PEFT's format), and that resumes from them.

    The same as :func:`peftkit.patch_transformers` does for every ``Trainer``, without changing transformers
    for the rest of the process.
    """

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        checkpoints.trainer_save(self, output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        checkpoints.trainer_load_from_checkpoint(self, resume_from_checkpoint, model)


class LossBar(ProgressCallback):
    """tqdm progress bar with the latest training loss as its postfix, instead of printing log dicts."""

    def on_log(self, args: TrainingArguments, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
        """Show the latest loss on the bar."""
        if self.training_bar is not None and logs and "loss" in logs:
            self.training_bar.set_postfix(loss=f"{logs['loss']:.4f}", refresh=False)


def make_trainer(
    model: torch.nn.Module,
    dataset: torch.utils.data.Dataset,
    collate: Any,
    args: TrainingArguments,
    callbacks: Sequence[TrainerCallback] = (),
) -> AdapterTrainer:
    """An :class:`AdapterTrainer` with the loss bar and the method's ``callbacks`` (AdaLoRA's rank allocation)."""
    trainer = AdapterTrainer(model=model, args=args, train_dataset=dataset, data_collator=collate)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(LossBar())
    for callback in callbacks:
        trainer.add_callback(callback)
    return trainer
