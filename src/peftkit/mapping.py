"""PEFT's entry points: ``get_peft_model`` and the low-level state-dict functions."""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import _IncompatibleKeys

from peftkit import functional as F
from peftkit.adapter_state import replace_existing_adapter
from peftkit.config import PeftConfig, config_class_for
from peftkit.errors import AdapterNameError, ConfigError, UsageError
from peftkit.io.keys import MODEL_PREFIX, add_prefix, strip_prefix
from peftkit.io.save import base_model_name
from peftkit.io.sharded import gather_adapter_state, unwrap_parallel
from peftkit.io.state import adapter_state_dict, adapter_tensors, check_and_load, wants_embedding_layers
from peftkit.layers.placement import adapters_on_meta
from peftkit.layers.walk import iter_adapter_modules
from peftkit.mixed_model import PeftMixedModel
from peftkit.peft_model import PeftModel
from peftkit.tasks import model_class_for_task


def get_peft_model(
    model: nn.Module,
    peft_config: PeftConfig,
    adapter_name: str = "default",
    mixed: bool = False,
    autocast_adapter_dtype: bool = True,
    revision: str | None = None,
    low_cpu_mem_usage: bool = False,
) -> PeftModel:
    """Wrap ``model`` with a new adapter described by ``peft_config`` (the config object is not modified).

    The wrapper class follows ``peft_config.task_type`` (e.g. ``PeftModelForCausalLM``); ``mixed=True`` gives a
    :class:`~peftkit.mixed_model.PeftMixedModel`, to which adapters of other methods can be added.
    """
    if isinstance(model, PeftModel):
        raise UsageError("The model already is a PeftModel; use model.add_adapter(name, config) to add another.")
    if any(True for _ in iter_adapter_modules(model)):
        warnings.warn(
            "You are trying to modify a model that already holds adapters (from an earlier get_peft_model or "
            "injection). To start over with another config, call unload() on the earlier PeftModel first.",
            UserWarning,
            stacklevel=2,
        )
        replace_existing_adapter(model, adapter_name)
    config = copy.deepcopy(peft_config)
    config.base_model_name_or_path = base_model_name(model)
    if revision is not None:
        config.revision = revision
    if mixed:  # adapters of several methods, active together
        return PeftMixedModel(model, config, adapter_name)
    return model_class_for_task(config.task_type)(
        model,
        config,
        adapter_name,
        autocast_adapter_dtype=autocast_adapter_dtype,
        low_cpu_mem_usage=low_cpu_mem_usage,
    )


def get_peft_config(config_dict: dict[str, Any]) -> PeftConfig:
    """The config object of ``config_dict`` (an ``adapter_config.json``-style dict), class chosen by its
    ``peft_type``, built with the class's constructor as PEFT does (every key must be a field).

    Raises:
        ConfigError: no ``peft_type``, or a method peftkit does not implement.
        TypeError: a key that is not a field of that config class.
    """
    if "peft_type" not in config_dict:
        raise ConfigError("get_peft_config() needs a 'peft_type' key (e.g. 'LORA') to choose the config class.")
    return config_class_for(config_dict["peft_type"])(**config_dict)


def inject_adapter_in_model(
    peft_config: PeftConfig,
    model: nn.Module,
    adapter_name: str = "default",
    low_cpu_mem_usage: bool = False,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> nn.Module:
    """Inject adapter layers into ``model`` in place, without a ``PeftModel`` wrapper; returns ``model``.

    ``low_cpu_mem_usage`` creates the adapter's tensors on ``meta``, uninitialised, for a load to assign.
    """
    with adapters_on_meta(low_cpu_mem_usage):
        F.inject_adapter(model, peft_config, adapter_name, init_weights=not low_cpu_mem_usage)
    configs = model.__dict__.setdefault("_peftkit_configs", {})
    configs[adapter_name] = copy.deepcopy(peft_config)
    return model


def _split_wrapper(model: nn.Module) -> tuple[nn.Module, str]:
    if isinstance(model, PeftModel):
        return model.get_base_model(), MODEL_PREFIX
    return model, ""


def get_peft_model_state_dict(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor] | None = None,
    adapter_name: str = "default",
    unwrap_compiled: bool = False,
    save_embedding_layers: bool | str = "auto",
) -> dict[str, torch.Tensor]:
    """The adapter's tensors keyed as on disk (with ``base_model.model.`` when ``model`` is a PeftModel).

    Args:
        model: A PeftModel or a model with injected adapters, also inside DDP / FSDP / ``torch.compile``
            wrappers (whose names never reach the keys).
        state_dict: A full state dict of ``model`` (e.g. gathered from FSDP2 shards or ZeRO-3 partitions): the
            values are taken from it instead of the live parameters.
    """
    model = unwrap_parallel(model)  # also a compiled model's ``_orig_mod``, whatever ``unwrap_compiled`` says
    if isinstance(model, PeftModel) and model._is_prompt_learning:
        return model.get_adapter_state_dict(adapter_name)
    inner, prefix = _split_wrapper(model)
    config = _config_of(model, adapter_name)
    state = adapter_state_dict(inner, adapter_name, config, save_embedding_layers, state_dict)
    return add_prefix(state, prefix)


def gather_peft_model_state_dict(
    model: nn.Module, adapter_name: str = "default", save_embedding_layers: bool | str = "auto"
) -> dict[str, torch.Tensor]:
    """The adapter's full tensors on the CPU, gathered from FSDP2 shards / ZeRO-3 partitions (only the adapter's,
    never the base weights), keyed like :func:`get_peft_model_state_dict`.

    A collective: call it on every rank; then e.g. ``model.save_pretrained(dir, state_dict=state,
    is_main_process=rank == 0)`` (the keys are accepted there as well).
    """
    model = unwrap_parallel(model)
    inner, prefix = _split_wrapper(model)
    config = _config_of(model, adapter_name)
    embedding = wants_embedding_layers(config, save_embedding_layers)
    return add_prefix(gather_adapter_state(inner, adapter_tensors(inner, adapter_name, config, embedding)), prefix)


def set_peft_model_state_dict(
    model: nn.Module,
    peft_model_state_dict: dict[str, torch.Tensor],
    adapter_name: str = "default",
    ignore_mismatched_sizes: bool = False,
    low_cpu_mem_usage: bool = False,
) -> Any:
    """Copy an adapter state dict (on-disk keys) into an already injected adapter, after checking it all.

    Returns:
        ``(missing_keys, unexpected_keys)`` counted as PEFT counts them (``model.load_state_dict(...,
        strict=False)``): ``missing_keys`` are the keys of ``model.state_dict()`` the load left untouched (the base
        model's and other adapters' tensors); ``unexpected_keys`` the keys that fit nothing (ignored, with a
        warning). Base-model tensors in the state dict (``bias="all"``) are loaded, as PEFT loads them.

    Raises:
        CheckpointError: an adapter key is missing, or a shape differs (the model is untouched).
    """
    model = unwrap_parallel(model)
    if isinstance(model, PeftModel) and model._is_prompt_learning:
        model._tuner.load_state(adapter_name, peft_model_state_dict)
        encoder = f"prompt_encoder.{adapter_name}."
        return _IncompatibleKeys(
            missing_keys=[k for k in model.state_dict() if not k.startswith(encoder)], unexpected_keys=[]
        )
    inner, prefix = _split_wrapper(model)
    config = _config_of(model, adapter_name)
    state = {strip_prefix(k): v for k, v in peft_model_state_dict.items()}
    # check_and_load raises on any missing required key; it reports the optional base tensors (embedding layers,
    # saved only for a resized vocabulary) the checkpoint left out, and the keys it ignored or loaded into the base.
    expected = adapter_tensors(inner, adapter_name, config, embedding_layers=None)
    report = check_and_load(inner, adapter_name, config, state, ignore_mismatched_sizes=ignore_mismatched_sizes)
    loaded = {tensor.source for key, tensor in expected.items() if key not in report.absent} | set(report.base)
    missing = [prefix + key for key in inner.state_dict() if key not in loaded]
    return _IncompatibleKeys(missing_keys=missing, unexpected_keys=[prefix + key for key in report.unexpected])


def _config_of(model: nn.Module, adapter_name: str) -> PeftConfig:
    for attr in ("peft_config", "_peftkit_configs"):
        configs = getattr(model, attr, None)
        if isinstance(configs, dict) and adapter_name in configs:
            return configs[adapter_name]
    raise AdapterNameError(f"No adapter named {adapter_name!r} was injected into this model.")
