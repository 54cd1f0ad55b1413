"""``PeftModelFor*`` task classes, chosen from a config's ``task_type``.

For layer methods the adapters live inside the base model, so the task classes mostly pass calls through;
they give ``forward`` an explicit signature (``Trainer`` filters dataset columns by it) and add
task-specific config rules (sequence classification trains the classifier head in full). With a prompt
adapter, ``PeftModel.forward`` / ``generate`` hand the inputs to :mod:`peftkit.methods.prompt.model`, which
extends them as ``prompt_task`` requires.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from peftkit.compile_frames import eager_frame
from peftkit.config import PeftConfig
from peftkit.errors import ArgumentTypeError
from peftkit.methods.prompt.model import prepare_causal_lm_inputs
from peftkit.peft_model import TASK_CLASSES, PeftModel
from peftkit.types import TaskType

_INPUTS = ("input_ids", "attention_mask", "inputs_embeds")
_OUTPUT_FLAGS = ("output_attentions", "output_hidden_states", "return_dict", "task_ids")


def explicit_forward(*names: str, dropped: tuple[str, ...] = ()) -> Callable[..., Any]:
    """A ``forward`` whose signature lists ``names`` (``Trainer`` keeps the dataset columns it names).

    Arguments left at ``None``, ``task_ids`` (multitask prompts only) and ``dropped`` are not passed on;
    the rest go to :meth:`PeftModel.forward` unchanged.
    """

    @eager_frame  # argument plumbing only; the model below it is what compiles
    def forward(self: PeftModel, *args: Any, adapter_names: Sequence[str] | None = None, **kwargs: Any) -> Any:
        if len(args) > len(names):
            raise ArgumentTypeError(
                f"{type(self).__name__}.forward takes at most {len(names)} positional inputs: {names}."
            )
        kwargs.update(zip(names, args))
        skip = {"task_ids", *dropped}
        inputs = {k: v for k, v in kwargs.items() if v is not None and k not in skip}
        return PeftModel.forward(self, adapter_names=adapter_names, **inputs)

    keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD
    forward.__signature__ = inspect.Signature(  # type: ignore[attr-defined]  # read by inspect.signature (Trainer)
        [
            inspect.Parameter("self", keyword),
            *(inspect.Parameter(n, keyword, default=None) for n in (*names, *dropped)),
            inspect.Parameter("adapter_names", inspect.Parameter.KEYWORD_ONLY, default=None),
            inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD),
        ]
    )
    return forward


class PeftModelForCausalLM(PeftModel):
    """Adapters on a causal language model (``AutoModelForCausalLM``)."""

    prompt_task = TaskType.CAUSAL_LM
    forward = explicit_forward(*_INPUTS, "labels", *_OUTPUT_FLAGS)

    def prepare_inputs_for_generation(self, *args: Any, **kwargs: Any) -> Any:
        """The base model's generation inputs, with the virtual tokens of an active prompt adapter."""
        original = self.get_base_model().prepare_inputs_for_generation
        if self._is_prompt_learning and not self._tuner.disabled:
            return prepare_causal_lm_inputs(self._tuner, original, *args, **kwargs)
        return original(*args, **kwargs)


class PeftModelForSeq2SeqLM(PeftModel):
    """Adapters on an encoder-decoder model (``AutoModelForSeq2SeqLM``)."""

    prompt_task = TaskType.SEQ_2_SEQ_LM
    forward = explicit_forward(*_INPUTS, *(f"decoder_{n}" for n in _INPUTS), "labels", *_OUTPUT_FLAGS)

    def generate(self, *, adapter_names: Sequence[str] | None = None, **kwargs: Any) -> Any:  # type: ignore[override]
        """:meth:`PeftModel.generate` with keyword inputs only, as PEFT's: a positional input is a ``TypeError``."""
        return PeftModel.generate(self, adapter_names=adapter_names, **kwargs)


class _EncoderTaskModel(PeftModel):
    """Shared forward of the encoder tasks; ``head_module_names`` train in full (added to modules_to_save)."""

    head_module_names: tuple[str, ...] = ()
    forward = explicit_forward(*_INPUTS, "labels", *_OUTPUT_FLAGS)

    def _prepare_config(self, config: PeftConfig, model: nn.Module) -> PeftConfig:
        if not self.head_module_names or not hasattr(config, "modules_to_save"):
            return config
        current = list(config.modules_to_save or [])
        extra = [n for n in self.head_module_names if n not in current]
        if not extra:
            return config
        config = copy.copy(config)
        config.modules_to_save = current + extra
        return config


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

    forward = explicit_forward(*_INPUTS, *_OUTPUT_FLAGS, dropped=("labels",))


TASK_TO_MODEL_CLASS: dict[TaskType, type[PeftModel]] = {
    TaskType.CAUSAL_LM: PeftModelForCausalLM,
    TaskType.SEQ_2_SEQ_LM: PeftModelForSeq2SeqLM,
    TaskType.SEQ_CLS: PeftModelForSequenceClassification,
    TaskType.TOKEN_CLS: PeftModelForTokenClassification,
    TaskType.QUESTION_ANS: PeftModelForQuestionAnswering,
    TaskType.FEATURE_EXTRACTION: PeftModelForFeatureExtraction,
}
TASK_CLASSES.update(TASK_TO_MODEL_CLASS)


def model_class_for_task(task_type: TaskType | str | None) -> type[PeftModel]:
    """The ``PeftModel`` class for ``task_type`` (``PeftModel`` itself for ``None``)."""
    return PeftModel if task_type is None else TASK_TO_MODEL_CLASS[TaskType(task_type)]
