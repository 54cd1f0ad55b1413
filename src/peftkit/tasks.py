"""``PeftModelFor*`` task classes, chosen from a config's ``task_type``.

For layer methods the adapters live inside the base model, so the task classes mostly pass calls through;
they give ``forward`` an explicit signature (``Trainer`` filters dataset columns by it) and add
task-specific config rules (sequence classification trains the classifier head in full). With a prompt
adapter, ``PeftModel.forward`` / ``generate`` hand the inputs to :mod:`peftkit.methods.prompt.model`, which
extends them as ``prompt_task`` requires.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from peftkit.config import PeftConfig
from peftkit.methods.prompt.model import prepare_causal_lm_inputs
from peftkit.peft_model import PeftModel
from peftkit.types import TaskType


class PeftModelForCausalLM(PeftModel):
    """Adapters on a causal language model (``AutoModelForCausalLM``)."""

    prompt_task = TaskType.CAUSAL_LM

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        task_ids: torch.Tensor | None = None,
        adapter_names: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        inputs = _present(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            labels=labels,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
        )
        return super().forward(adapter_names=adapter_names, **inputs, **kwargs)

    def prepare_inputs_for_generation(self, *args: Any, **kwargs: Any) -> Any:
        original = self.get_base_model().prepare_inputs_for_generation
        if self._is_prompt_learning and not self._tuner.disabled:
            return prepare_causal_lm_inputs(self._tuner, original, *args, **kwargs)
        return original(*args, **kwargs)


class PeftModelForSeq2SeqLM(PeftModel):
    """Adapters on an encoder-decoder model (``AutoModelForSeq2SeqLM``)."""

    prompt_task = TaskType.SEQ_2_SEQ_LM

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        task_ids: torch.Tensor | None = None,
        adapter_names: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        inputs = _present(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            decoder_inputs_embeds=decoder_inputs_embeds,
            labels=labels,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
        )
        return super().forward(adapter_names=adapter_names, **inputs, **kwargs)


class _EncoderTaskModel(PeftModel):
    """Shared forward of the encoder tasks; ``head_module_names`` train in full (added to modules_to_save)."""

    head_module_names: tuple[str, ...] = ()

    def _prepare_config(self, config: PeftConfig, model: nn.Module) -> PeftConfig:
        if not self.head_module_names or not hasattr(config, "modules_to_save"):
            return config
        current = list(config.modules_to_save or [])
        extra = [n for n in self.head_module_names if n not in current]
        if not extra:
            return config
        config = copy.copy(config)
        config.modules_to_save = current + extra  # type: ignore[attr-defined]
        return config

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        task_ids: torch.Tensor | None = None,
        adapter_names: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        inputs = _present(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            labels=labels,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
        )
        return super().forward(adapter_names=adapter_names, **inputs, **kwargs)


class PeftModelForSequenceClassification(_EncoderTaskModel):
    """Sequence classification; the classifier head (``classifier`` / ``score``) trains in full."""

    prompt_task = TaskType.SEQ_CLS

    head_module_names = ("classifier", "score")


class PeftModelForTokenClassification(_EncoderTaskModel):
    """Token classification; the classifier head trains in full."""

    prompt_task = TaskType.TOKEN_CLS

    head_module_names = ("classifier", "score")


class PeftModelForQuestionAnswering(_EncoderTaskModel):
    """Extractive question answering; the ``qa_outputs`` head trains in full."""

    prompt_task = TaskType.QUESTION_ANS

    head_module_names = ("qa_outputs",)


class PeftModelForFeatureExtraction(_EncoderTaskModel):
    """Hidden-state features (``AutoModel``)."""

    prompt_task = TaskType.FEATURE_EXTRACTION

    def forward(self, *args: Any, adapter_names: Sequence[str] | None = None, **kwargs: Any) -> Any:
        kwargs.pop("labels", None)
        kwargs.pop("task_ids", None)
        return PeftModel.forward(self, *args, adapter_names=adapter_names, **kwargs)


TASK_TO_MODEL_CLASS: dict[TaskType, type[PeftModel]] = {
    TaskType.CAUSAL_LM: PeftModelForCausalLM,
    TaskType.SEQ_2_SEQ_LM: PeftModelForSeq2SeqLM,
    TaskType.SEQ_CLS: PeftModelForSequenceClassification,
    TaskType.TOKEN_CLS: PeftModelForTokenClassification,
    TaskType.QUESTION_ANS: PeftModelForQuestionAnswering,
    TaskType.FEATURE_EXTRACTION: PeftModelForFeatureExtraction,
}


def model_class_for_task(task_type: TaskType | str | None) -> type[PeftModel]:
    """The ``PeftModel`` class for ``task_type`` (``PeftModel`` itself for ``None``)."""
    return PeftModel if task_type is None else TASK_TO_MODEL_CLASS[TaskType(task_type)]


def _present(**kwargs: Any) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if v is not None}
