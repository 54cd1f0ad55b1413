"""peftkit's ``AutoModel*``: transformers' Auto classes that recognise adapter directories, no opt-in needed.

``peftkit.AutoModelForCausalLM.from_pretrained(path)`` returns the transformers model with peftkit's adapter
methods. When ``path`` (a directory or hub id) holds an ``adapter_config.json``, the base model named by its
``base_model_name_or_path`` is loaded and the adapter attached in place; when the directory also holds a
full model (``config.json``), that local model is the base.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from torch import nn

from peftkit.config import CONFIG_NAME, PeftConfig
from peftkit.errors import ConfigError
from peftkit.integrations.patch import adapter_detection
from peftkit.integrations.transformers import enable_adapter_methods
from peftkit.io.hub import HUB_KWARGS, resolve_file

#: transformers' name of a full model's config file.
MODEL_CONFIG_NAME = "config.json"


def find_adapter_config(name_or_path: str | os.PathLike, **hub_kwargs: Any) -> PeftConfig | None:
    """The adapter config at ``name_or_path`` (local or through the hub cache), or ``None`` if there is none."""
    subfolder = hub_kwargs.pop("subfolder", None) or None
    hub = {k: v for k, v in hub_kwargs.items() if k in HUB_KWARGS and v is not None}
    path = resolve_file(name_or_path, CONFIG_NAME, subfolder=subfolder, **hub)
    return None if path is None else PeftConfig.from_pretrained(os.path.dirname(path))


def base_model_location(name_or_path: str | os.PathLike, config: PeftConfig) -> str:
    """Where the base model of an adapter is: the directory itself if it holds a full model, else the
    config's ``base_model_name_or_path``."""
    local = os.fspath(name_or_path)
    if os.path.isfile(os.path.join(local, MODEL_CONFIG_NAME)):
        return local
    if not config.base_model_name_or_path:
        raise ConfigError(
            f"{local}/adapter_config.json has no base_model_name_or_path; load the base model yourself and call "
            "model.load_adapter(adapter_dir)."
        )
    return config.base_model_name_or_path


class AutoAdapterModel:
    """Base of the ``AutoModel*`` classes; ``transformers_auto`` names the transformers class used."""

    transformers_auto: ClassVar[str] = "AutoModel"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise OSError(f"{type(self).__name__} is built with from_pretrained(path) or from_config(config).")

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *model_args: Any,
        adapter_name: str = "default",
        is_trainable: bool = False,
        **kwargs: Any,
    ) -> nn.Module:
        """Load a model, or a base model plus the adapter at ``pretrained_model_name_or_path``.

        Args:
            adapter_name: Name given to the detected adapter.
            is_trainable: Load the adapter trainable (default: frozen, model in eval mode).
            kwargs: transformers' ``from_pretrained`` arguments (hub arguments are also used for the adapter).
        """
        import transformers

        hub = {k: kwargs[k] for k in (*HUB_KWARGS, "subfolder") if k in kwargs}
        adapter = find_adapter_config(pretrained_model_name_or_path, **hub)
        location = os.fspath(pretrained_model_name_or_path)
        if adapter is not None:
            location = base_model_location(pretrained_model_name_or_path, adapter)
            kwargs.pop("subfolder", None)
            if adapter.revision is not None and location != os.fspath(pretrained_model_name_or_path):
                kwargs.setdefault("revision", adapter.revision)
        auto = getattr(transformers, cls.transformers_auto)
        with adapter_detection(False):  # peftkit attaches the adapter, not transformers (nor the reference peft)
            model: Any = enable_adapter_methods(auto.from_pretrained(location, *model_args, **kwargs))
        if adapter is not None:
            model.load_adapter(
                pretrained_model_name_or_path, adapter_name=adapter_name, is_trainable=is_trainable, **hub
            )
        return model

    @classmethod
    def from_config(cls, config: Any, **kwargs: Any) -> nn.Module:
        """Transformers' ``from_config``, with the adapter methods."""
        import transformers

        return enable_adapter_methods(getattr(transformers, cls.transformers_auto).from_config(config, **kwargs))


def _auto(name: str, transformers_auto: str) -> type[AutoAdapterModel]:
    doc = f"transformers.{transformers_auto} with adapter-directory detection and peftkit's adapter methods."
    return type(name, (AutoAdapterModel,), {"transformers_auto": transformers_auto, "__doc__": doc})


AutoModel = _auto("AutoModel", "AutoModel")
AutoModelForCausalLM = _auto("AutoModelForCausalLM", "AutoModelForCausalLM")
AutoModelForSeq2SeqLM = _auto("AutoModelForSeq2SeqLM", "AutoModelForSeq2SeqLM")
AutoModelForSequenceClassification = _auto("AutoModelForSequenceClassification", "AutoModelForSequenceClassification")
AutoModelForTokenClassification = _auto("AutoModelForTokenClassification", "AutoModelForTokenClassification")
AutoModelForQuestionAnswering = _auto("AutoModelForQuestionAnswering", "AutoModelForQuestionAnswering")
