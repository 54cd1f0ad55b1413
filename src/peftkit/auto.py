"""``AutoPeftModel*``: load an adapter directory and the base model it names in one call."""

from __future__ import annotations

import os
from typing import Any, ClassVar

from peftkit.config import PeftConfig
from peftkit.errors import ConfigError
from peftkit.io.load import split_hub_kwargs
from peftkit.peft_model import PeftModel
from peftkit.tasks import TASK_TO_MODEL_CLASS, model_class_for_task
from peftkit.types import TaskType


class AutoPeftModel:
    """Reads ``adapter_config.json``, loads ``base_model_name_or_path`` with the matching transformers Auto
    class, and attaches the adapter."""

    transformers_auto: ClassVar[str | None] = None
    task_type: ClassVar[TaskType | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise OSError(f"{type(self).__name__} is built with from_pretrained(adapter_dir).")

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        adapter_name: str = "default",
        is_trainable: bool = False,
        config: PeftConfig | None = None,
        revision: str | None = None,
        **kwargs: Any,
    ) -> PeftModel:
        """Load base model + adapter; ``kwargs`` go to the base model's ``from_pretrained``."""
        import transformers

        hub = split_hub_kwargs(kwargs)
        config = config or PeftConfig.from_pretrained(pretrained_model_name_or_path, revision=revision, **hub)
        base_path = config.base_model_name_or_path
        if not base_path:
            raise ConfigError(
                f"{pretrained_model_name_or_path!s}/adapter_config.json has no base_model_name_or_path; load the "
                "base model yourself and call PeftModel.from_pretrained(base, adapter_dir)."
            )
        auto_name = cls._auto_class_name(config)
        base = getattr(transformers, auto_name).from_pretrained(base_path, revision=config.revision, **kwargs)
        peft_cls = model_class_for_task(cls.task_type or config.task_type)
        return peft_cls.from_pretrained(
            base,
            pretrained_model_name_or_path,
            adapter_name=adapter_name,
            is_trainable=is_trainable,
            config=config,
            revision=revision,
            **hub,
        )

    @classmethod
    def _auto_class_name(cls, config: PeftConfig) -> str:
        if cls.transformers_auto is not None:
            if cls.task_type is not None and config.task_type not in (None, cls.task_type):
                raise ConfigError(
                    f"This adapter was trained for task {config.task_type}, not {cls.task_type}; use "
                    f"AutoPeftModel or the matching AutoPeftModelFor* class."
                )
            return cls.transformers_auto
        if config.task_type is not None:
            return _TASK_TO_AUTO[TaskType(config.task_type)]
        mapping = config.auto_mapping or {}
        return "AutoModel" if not mapping.get("base_model_class") else _auto_for_class(mapping["base_model_class"])


_TASK_TO_AUTO = {
    TaskType.CAUSAL_LM: "AutoModelForCausalLM",
    TaskType.SEQ_2_SEQ_LM: "AutoModelForSeq2SeqLM",
    TaskType.SEQ_CLS: "AutoModelForSequenceClassification",
    TaskType.TOKEN_CLS: "AutoModelForTokenClassification",
    TaskType.QUESTION_ANS: "AutoModelForQuestionAnswering",
    TaskType.FEATURE_EXTRACTION: "AutoModel",
}


def _auto_for_class(class_name: str) -> str:
    """The Auto class whose name suffix matches ``class_name`` (``LlamaForCausalLM`` -> ``AutoModelForCausalLM``)."""
    for auto in _TASK_TO_AUTO.values():
        suffix = auto.removeprefix("AutoModel")
        if suffix and class_name.endswith(suffix):
            return auto
    return "AutoModel"


def _auto_subclass(name: str, task: TaskType) -> type[AutoPeftModel]:
    return type(
        name,
        (AutoPeftModel,),
        {
            "transformers_auto": _TASK_TO_AUTO[task],
            "task_type": task,
            "__doc__": f"AutoPeftModel for {task.value}: base loaded with transformers.{_TASK_TO_AUTO[task]}.",
        },
    )


AutoPeftModelForCausalLM = _auto_subclass("AutoPeftModelForCausalLM", TaskType.CAUSAL_LM)
AutoPeftModelForSeq2SeqLM = _auto_subclass("AutoPeftModelForSeq2SeqLM", TaskType.SEQ_2_SEQ_LM)
AutoPeftModelForSequenceClassification = _auto_subclass("AutoPeftModelForSequenceClassification", TaskType.SEQ_CLS)
AutoPeftModelForTokenClassification = _auto_subclass("AutoPeftModelForTokenClassification", TaskType.TOKEN_CLS)
AutoPeftModelForQuestionAnswering = _auto_subclass("AutoPeftModelForQuestionAnswering", TaskType.QUESTION_ANS)
AutoPeftModelForFeatureExtraction = _auto_subclass("AutoPeftModelForFeatureExtraction", TaskType.FEATURE_EXTRACTION)

assert set(TASK_TO_MODEL_CLASS) == set(_TASK_TO_AUTO)
