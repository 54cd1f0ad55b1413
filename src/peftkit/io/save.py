"""Writing an adapter directory in PEFT's format (config JSON + safetensors), atomically as a pair."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from peftkit.config import CONFIG_NAME, PeftConfig
from peftkit.io.commit import commit_files
from peftkit.io.files import BIN_NAME, SAFETENSORS_NAME, tensor_writer
from peftkit.io.sharded import check_writable, warn_flattened


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
    extra: dict[str, Callable[[str], None]] | None = None,
) -> None:
    """Write ``adapter_config.json`` and the weights file into ``directory`` (created if needed).

    Both files, and the removal of a weights file of the other format left by an earlier save (loaders prefer
    safetensors and would read the stale one), are one commit (:func:`~peftkit.io.commit.commit_files`): a
    save that fails or is killed at any point leaves a directory that loads the previous adapter or the new
    one, never new weights beside an old config. ``extra``: more files of ``directory`` to replace in the same
    commit (``{name: write(path)}``, e.g. the model card).
    """
    check_writable(tensors)  # before anything touches the directory
    text = json.dumps(config.to_dict(), indent=2, sort_keys=True)
    weights, stale = (SAFETENSORS_NAME, BIN_NAME) if safe_serialization else (BIN_NAME, SAFETENSORS_NAME)

    def write_config(path: str) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)

    commit_files(
        directory,
        {CONFIG_NAME: write_config, weights: tensor_writer(tensors, safe_serialization), **(extra or {})},
        remove=[stale],
    )


def save_adapters(
    peft_model: Any,
    root: str | os.PathLike,
    names: Sequence[str],
    safe_serialization: bool = True,
    save_embedding_layers: bool | str = "auto",
    state_dict: dict[str, torch.Tensor] | None = None,
    initial_adapter: str | os.PathLike | None = None,
) -> None:
    """Write the adapters ``names`` of ``peft_model`` (a ``PeftModel``) under ``root`` (:func:`adapter_directory`),
    one at a time, and ``root``'s ``README.md`` model card (:mod:`peftkit.io.model_card`), committed together with
    the ``default`` adapter's files (alone when that adapter is not saved). The other arguments are
    ``PeftModel.save_pretrained``'s (``initial_adapter``: its ``path_initial_model_for_weight_conversion``,
    :mod:`peftkit.io.weight_conversion`)."""
    from peftkit.io.model_card import card_writes
    from peftkit.io.weight_conversion import convert_to_lora

    card = card_writes(peft_model, root)
    prepared = []
    for name in names:  # every conversion is checked before the first file is written
        config = config_for_saving(peft_model.peft_config[name], peft_model.get_base_model())
        tensors = peft_model.get_adapter_state_dict(name, save_embedding_layers, state_dict)
        warn_flattened(tensors, name)
        if initial_adapter is not None:
            config, tensors = convert_to_lora(config, tensors, initial_adapter)
        prepared.append((name, config, tensors))
    for name, config, tensors in prepared:
        write_adapter(
            adapter_directory(root, name), config, tensors, safe_serialization, card if name == "default" else None
        )
    if "default" not in names:
        commit_files(root, card)
