"""Reading an adapter directory (local or from the hub) and attaching it to a model, all-or-nothing."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from peftkit.config import PeftConfig
from peftkit.errors import CheckpointError
from peftkit.functional import inject_adapter
from peftkit.io.files import BIN_NAME, SAFETENSORS_NAME, load_tensors
from peftkit.io.hub import HUB_KWARGS, resolve_file
from peftkit.io.keys import strip_prefix
from peftkit.io.state import check_and_load
from peftkit.layers.placement import adapters_on_meta
from peftkit.methods.spec import method_of


def split_hub_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop and return the huggingface_hub keyword arguments from ``kwargs``."""
    return {k: kwargs.pop(k) for k in list(kwargs) if k in HUB_KWARGS}


def read_weights(
    model_id: str | os.PathLike, subfolder: str | None = None, device: str | torch.device = "cpu", **hub_kwargs: Any
) -> dict[str, torch.Tensor]:
    """The adapter tensors of ``model_id``: ``adapter_model.safetensors``, else ``adapter_model.bin``."""
    for filename in (SAFETENSORS_NAME, BIN_NAME):
        path = resolve_file(model_id, filename, subfolder=subfolder, **dict(hub_kwargs))
        if path is not None:
            return load_tensors(path, device=device)
    where = os.path.join(os.fspath(model_id), subfolder) if subfolder else os.fspath(model_id)
    raise CheckpointError(f"No {SAFETENSORS_NAME} or {BIN_NAME} found at {where}; is this an adapter directory?")


def attach_adapter(
    model: nn.Module,
    adapter_name: str,
    config: PeftConfig,
    state: dict[str, torch.Tensor],
    *,
    active: Sequence[str] | None = None,
    ignore_mismatched_sizes: bool = False,
    low_cpu_mem_usage: bool = False,
) -> list[str]:
    """Inject ``adapter_name`` (uninitialised) and fill it from ``state``; undo everything if anything fails.

    ``state`` has on-disk keys; the ``base_model.model.`` prefix is optional. With ``low_cpu_mem_usage`` the
    adapter is created on ``meta`` and the loaded tensors are assigned (no allocation of values to overwrite).

    Returns:
        The target module names (for configs whose ``target_modules`` was ``"all-linear"``).
    """
    init_warning = method_of(config).init_warning
    message = init_warning(config, adapter_name) if init_warning is not None else None
    if message:
        warnings.warn(message, stacklevel=3)
    trainable = not config.inference_mode  # a load with is_trainable=True trains the newcomer, active or not
    with adapters_on_meta(low_cpu_mem_usage):
        record = inject_adapter(model, config, adapter_name, init_weights=False, active=active, trainable=trainable)
    try:
        check_and_load(
            model,
            adapter_name,
            config,
            {strip_prefix(k): v for k, v in state.items()},
            ignore_mismatched_sizes=ignore_mismatched_sizes,
        )
    except BaseException:
        record.undo(model)
        raise
    return record.target_names
