"""A ``transformers.Trainer`` callback that runs AdaLoRA's rank allocation after every optimizer step."""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from peftkit.errors import ArgumentTypeError
from peftkit.methods.adalora.model import AdaLoraModel


def find_adalora_model(model: nn.Module) -> AdaLoraModel:
    """The :class:`AdaLoraModel` inside ``model`` (a ``PeftModel``, possibly wrapped by DDP / accelerate).

    Raises:
        TypeError: ``model`` carries no AdaLoRA adapter.
    """
    seen = model
    while True:
        if isinstance(seen, AdaLoraModel):
            return seen
        inner = getattr(seen, "base_model", None)
        if isinstance(inner, AdaLoraModel):
            return inner
        wrapped = getattr(seen, "module", None)
        if not isinstance(wrapped, nn.Module):
            raise ArgumentTypeError(
                f"AdaLoraCallback needs a model with AdaLoRA adapters (get_peft_model with an AdaLoraConfig), "
                f"got {type(model).__name__}."
            )
        seen = wrapped


class AdaLoraCallback(TrainerCallback):
    """Calls ``update_and_allocate(state.global_step)`` after each optimizer step, while gradients are still
    there (``Trainer`` zeroes them right after), so that ranks are pruned on AdaLoRA's schedule.

    Example:
        >>> trainer = Trainer(model=peft_model, args=args, train_dataset=ds, callbacks=[AdaLoraCallback()])
    """

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Run :meth:`AdaLoraModel.update_and_allocate` for the step just taken."""
        model = kwargs.get("model")
        if model is None:
            raise ArgumentTypeError("AdaLoraCallback got no model from the Trainer.")
        find_adalora_model(model).update_and_allocate(state.global_step)
