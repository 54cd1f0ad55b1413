"""``AdaLoraModel``: the tuner model of AdaLoRA adapters (``PeftModel.base_model``).

On top of :class:`~peftkit.tuner.TunerModel` it adds what AdaLoRA training needs: the orthogonality penalty
on the loss of every forward that computes one, and :meth:`AdaLoraModel.update_and_allocate`, called once
per optimizer step (by hand, or by :class:`~peftkit.methods.adalora.callback.AdaLoraCallback` with a
``Trainer``). Only one adapter can train at a time, as in PEFT.
"""

from __future__ import annotations

from typing import Any

import torch

from peftkit.config import PeftConfig
from peftkit.errors import ArgumentTypeError, ConfigError
from peftkit.methods.adalora.allocator import RankAllocator, orthogonality_penalty
from peftkit.methods.adalora.config import AdaLoraConfig
from peftkit.tuner import TunerModel


class AdaLoraModel(TunerModel):
    """Holds the model with AdaLoRA layers, their configs, and the rank allocator of the trainable adapter."""

    prefix: str = "lora_"

    def __init__(
        self,
        model: torch.nn.Module,
        peft_config: PeftConfig | dict[str, PeftConfig] | None,
        adapter_name: str = "default",
        low_cpu_mem_usage: bool = False,
    ) -> None:
        super().__init__(model, peft_config, adapter_name, low_cpu_mem_usage)
        self.rankallocator: RankAllocator | None = None

    def trainable_adapters(self) -> list[str]:
        """Adapters whose config is not in inference mode."""
        return [name for name, config in self.peft_config.items() if not config.inference_mode]

    @property
    def trainable_adapter_name(self) -> str:
        """The one adapter that trains (and whose ranks are allocated)."""
        names = self.trainable_adapters()
        if len(names) != 1:
            raise ConfigError(
                f"AdaLoRA trains exactly one adapter, but {len(names)} are trainable ({names}); load the others "
                "with is_trainable=False (inference_mode=True)."
            )
        return names[0]

    def check_new_config(self, adapter_name: str, config: PeftConfig) -> None:
        """Refuse a second *trainable* AdaLoRA adapter (added, or loaded with ``is_trainable=True``)."""
        if not config.inference_mode and self.trainable_adapters():
            raise ConfigError(
                f"AdaLoraModel supports only 1 trainable adapter ({self.trainable_adapters()[0]!r} already is); "
                f"add {adapter_name!r} with inference_mode=True (or load it with is_trainable=False)."
            )

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The model's forward; when it returns a ``loss``, add ``orth_reg_weight`` times the orthogonality
        penalty of the trainable adapter (see :func:`orthogonality_penalty`)."""
        outputs = self.model(*args, **kwargs)
        loss = getattr(outputs, "loss", None)
        trainable = self.trainable_adapters()
        if isinstance(loss, torch.Tensor) and len(trainable) == 1:
            penalty = orthogonality_penalty(self.model, trainable[0])
            if penalty is not None:
                config = self.peft_config[trainable[0]]
                assert isinstance(config, AdaLoraConfig)  # an AdaLoraModel holds AdaLoRA adapters only
                outputs.loss = loss + config.orth_reg_weight * penalty
        return outputs

    def update_and_allocate(self, global_step: int) -> None:
        """Update importances and prune ranks to the budget of step ``global_step`` (0-based).

        Call it every step after ``loss.backward()`` (and the optimizer step) and before ``zero_grad()``;
        the allocation is written into the adapter config's ``rank_pattern``, which ``save_pretrained``
        uses to save only the kept ranks.
        """
        adapter = self.trainable_adapter_name
        if self.rankallocator is None or self.rankallocator.adapter != adapter:
            self.rankallocator = RankAllocator(self.model, adapter, self.peft_config[adapter])  # type: ignore[arg-type]  # an AdaLoraModel holds AdaLoraConfig adapters only
        self.rankallocator.step(global_step)

    def add_weighted_adapter(self, *args: Any, **kwargs: Any) -> None:
        """Not available for AdaLoRA (as in PEFT); use LoRA adapters to combine."""
        raise ArgumentTypeError("AdaLoraModel does not support add_weighted_adapter; use LoRA adapters instead.")
