"""Reading an adapter directory (local or from the hub) and attaching it to a model, all-or-nothing."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from peftkit.config import PeftConfig
from peftkit.errors import AdapterNameError, CheckpointError, ConfigError
from peftkit.functional import Injection, inject_adapter, iter_adapter_modules
from peftkit.io.files import BIN_NAME, SAFETENSORS_NAME, load_tensors
from peftkit.io.hub import HUB_KWARGS, resolve_file
from peftkit.io.keys import remap_keys, strip_prefix
from peftkit.io.state import check_and_load
from peftkit.layers.base import AdapterLayer
from peftkit.layers.placement import adapters_on_meta
from peftkit.locking import exclusive
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


def load_peft_weights(
    model_id: str | os.PathLike,
    device: str | torch.device | None = None,
    key_mapping: dict[str, str] | None = None,
    **hf_hub_download_kwargs: Any,
) -> dict[str, torch.Tensor]:
    """PEFT's ``load_peft_weights``: an adapter directory's (or hub repo's) tensors, keys as on disk.

    Args:
        model_id: A local adapter directory or a hub repo id.
        device: Where the tensors go; ``None``: the current accelerator if there is one, else the CPU.
        key_mapping: ``{regex: replacement}`` renaming the keys after their ``base_model.model.`` prefix (the first
            match wins; see :func:`peftkit.io.keys.remap_keys`).
        **hf_hub_download_kwargs: ``subfolder``, ``revision``, ``cache_dir``, ``token``, ... for the hub.

    Raises:
        CheckpointError: no ``adapter_model.safetensors`` or ``adapter_model.bin`` there.
    """
    if device is None:
        accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
        device = accelerator if accelerator is not None else "cpu"
    subfolder = hf_hub_download_kwargs.pop("subfolder", None)
    state = read_weights(model_id, subfolder=subfolder, device=device, **split_hub_kwargs(hf_hub_download_kwargs))
    return remap_keys(state, key_mapping) if key_mapping else state


@exclusive
def attach_adapter(
    model: nn.Module,
    adapter_name: str,
    config: PeftConfig,
    state: dict[str, torch.Tensor],
    *,
    active: Sequence[str] | None = None,
    ignore_mismatched_sizes: bool = False,
    low_cpu_mem_usage: bool = False,
) -> Injection:
    """Inject ``adapter_name`` (uninitialised) and fill it from ``state``; undo everything if anything fails.

    ``state`` has on-disk keys; the ``base_model.model.`` prefix is optional. With ``low_cpu_mem_usage`` the
    adapter is created on ``meta`` and the loaded tensors are assigned (no allocation of values to overwrite).

    Returns:
        The injection record (``target_names``: the adapted modules, e.g. for configs whose ``target_modules`` was
        ``"all-linear"``; ``parameter_names``: the adapted parameters).
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
        after_load = method_of(config).after_load
        if after_load is not None:
            after_load(model, config, adapter_name)
    except BaseException:
        record.undo(model)
        raise
    return record


#: Config fields that describe where an adapter came from, not what it computes.
_INFORMATIONAL_FIELDS = frozenset(
    {"inference_mode", "base_model_name_or_path", "revision", "peft_version", "auto_mapping", "init_lora_weights"}
)


def _comparable(value: Any) -> Any:
    if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value):
        return sorted(value)
    return value


def check_same_adapter_config(live: PeftConfig, loaded: PeftConfig, adapter_name: str) -> None:
    """Refuse to load ``loaded``'s weights into adapter ``adapter_name`` built from ``live`` when the two configs
    compute differently (e.g. another ``lora_alpha``): the weights alone would silently give another adapter.

    Raises:
        ConfigError: naming every field that differs, with both values.
    """
    ours, theirs = live.to_dict(), loaded.to_dict()
    differing = [
        f"{key}: loaded {theirs.get(key)!r} vs existing {ours.get(key)!r}"
        for key in sorted(set(ours) | set(theirs))
        if key not in _INFORMATIONAL_FIELDS and _comparable(ours.get(key)) != _comparable(theirs.get(key))
    ]
    if differing:
        raise ConfigError(
            f"Cannot load into the existing adapter {adapter_name!r}: its adapter_config.json differs ("
            + "; ".join(differing)
            + "). Delete the adapter first (delete_adapter) or load it under another name."
        )


@exclusive
def reload_adapter(
    model: nn.Module, adapter_name: str, config: PeftConfig, loaded: PeftConfig, state: dict[str, torch.Tensor]
) -> None:
    """Overwrite the weights of the existing layer adapter ``adapter_name`` (built from ``config``) in place with
    ``state`` (read with config ``loaded``): the same parameter objects, as PEFT's ``load_adapter`` does for a
    name it has, after checking all of ``state`` against them and the two configs against each other.

    Raises:
        AdapterNameError: the adapter is merged into the base weights (unmerge first).
        ConfigError: the configs compute differently (:func:`check_same_adapter_config`).
        CheckpointError: missing or unexpected keys, or shapes that differ (named with both shapes); the model
            is unchanged then.
    """
    merged = [
        name
        for name, m in iter_adapter_modules(model)
        if isinstance(m, AdapterLayer) and adapter_name in m.merged_adapters
    ]
    if merged:
        raise AdapterNameError(
            f"Adapter {adapter_name!r} is merged into the base weights of {merged[:3]}; unmerge it before loading "
            "new weights into it."
        )
    state = {strip_prefix(k): v for k, v in state.items()}
    check_and_load(model, adapter_name, config, state, dry_run=True)
    check_same_adapter_config(config, loaded, adapter_name)
    check_and_load(model, adapter_name, config, state)
