"""Writing an adapter directory in PEFT's format (config JSON + safetensors), atomically per file."""

from __future__ import annotations

import copy
import json
import os

import torch
from torch import nn

from peftkit.config import PeftConfig
from peftkit.io.files import BIN_NAME, SAFETENSORS_NAME, save_tensors


def adapter_directory(root: str | os.PathLike, adapter_name: str) -> str:
    """``root`` for the adapter named ``default``, ``root/<name>`` for any other (PEFT's layout)."""
    return os.fspath(root) if adapter_name == "default" else os.path.join(root, adapter_name)


def base_model_name(model: nn.Module) -> str | None:
    """The hub id or path a transformers model was loaded from (``None`` for models built from a config)."""
    name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    return name or None


def config_for_saving(config: PeftConfig, model: nn.Module | None) -> PeftConfig:
    """A copy of ``config`` as it goes on disk: ``inference_mode`` true, base model name and class filled in."""
    saved = copy.deepcopy(config)
    saved.inference_mode = True
    if model is not None:
        if saved.base_model_name_or_path is None:
            saved.base_model_name_or_path = base_model_name(model)
        if saved.task_type is None and saved.auto_mapping is None:
            saved.auto_mapping = {
                "base_model_class": type(model).__name__,
                "parent_library": type(model).__module__,
            }
    return saved


def write_adapter(
    directory: str | os.PathLike,
    config: PeftConfig,
    tensors: dict[str, torch.Tensor],
    safe_serialization: bool = True,
) -> None:
    """Write ``adapter_config.json`` and the weights file into ``directory`` (created if needed)."""
    os.makedirs(directory, exist_ok=True)
    # A config that cannot be serialised must fail the save before the weights file is replaced, so that the
    # previous adapter (weights and config) stays intact as a pair.
    json.dumps(config.to_dict())
    weights = os.path.join(directory, SAFETENSORS_NAME if safe_serialization else BIN_NAME)
    save_tensors(tensors, weights, safe_serialization=safe_serialization)
    config.save_pretrained(directory)
