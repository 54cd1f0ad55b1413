"""PEFT's adapter status reports: :func:`get_layer_status` (one record per adapter layer) and
:func:`get_model_status` (the whole model), with the reference's fields and values.

Both read the state every layer records (:class:`~peftkit.layers.base.AdapterState`): adapter layers and
``modules_to_save`` wrappers alike. ``"irregular"`` marks a value that differs where it should agree (some
tensors of an adapter train and others not; layers with different active adapters): a model in that state
was edited behind the adapter API and may not behave as expected.
"""

from __future__ import annotations

import collections
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from peftkit.errors import ArgumentTypeError, TargetingError
from peftkit.layers.base import AdapterLayer, AdapterState
from peftkit.layers.parameter_count import count_parameters

Irregular = Literal["irregular"]

__all__ = ["TunerLayerStatus", "TunerModelStatus", "get_layer_status", "get_model_status"]


@dataclass
class TunerLayerStatus:
    """One adapter layer (or ``modules_to_save`` wrapper).

    Attributes:
        name: Module path inside the tuner model (``model.model.layers.0.self_attn.q_proj``).
        module_type: ``"<method>.<class>"`` for adapter layers (``"lora.Linear"``), the class name otherwise.
        enabled: ``False`` while adapters are disabled.
        active_adapters: Adapters the forward applies.
        merged_adapters: Adapters merged into the base weight.
        requires_grad: Adapter -> ``True`` / ``False``, or ``"irregular"`` when its tensors disagree.
        available_adapters: Every adapter the layer holds, sorted.
        devices: Adapter -> sorted device types of its tensors (``["cpu"]``).
        quantization_backend: ``None``, as the reference reports for LoRA, IA3 and AdaLoRA layers on any base
            (its OFT, BOFT, VeRA, SHiRA and MiSS layers name the backend, e.g. ``"bnb 4bit"``; not mirrored yet).
    """

    name: str
    module_type: str
    enabled: bool
    active_adapters: list[str]
    merged_adapters: list[str]
    requires_grad: dict[str, bool | Irregular]
    available_adapters: list[str]
    devices: dict[str, list[str]]
    quantization_backend: str | None


@dataclass
class TunerModelStatus:
    """The whole model: the per-layer values combined (``"irregular"`` where the layers disagree).

    Attributes:
        base_model_type: Class name of the user's model (``"other"`` for a plain ``nn.Module``).
        adapter_model_type: Class name of the tuner model (``"LoraModel"``), ``"None"`` for in-place adapters.
        peft_types: Adapter -> ``peft_type`` value (empty for in-place adapters, as in the reference).
        trainable_params: Trainable parameter count. total_params: All parameters.
        num_adapter_layers: Number of layer records.
        enabled, active_adapters, merged_adapters, requires_grad, available_adapters, devices,
        quantization_backend: As in :class:`TunerLayerStatus`, combined over layers.
    """

    base_model_type: str
    adapter_model_type: str
    peft_types: dict[str, str]
    trainable_params: int
    total_params: int
    num_adapter_layers: int
    enabled: bool | Irregular
    active_adapters: list[str] | Irregular
    merged_adapters: list[str] | Irregular
    requires_grad: dict[str, bool | Irregular]
    available_adapters: list[str]
    devices: dict[str, list[str]]
    quantization_backend: str | Irregular | None


def _agreement(values: Iterable[bool | Irregular]) -> bool | Irregular:
    """``True`` / ``False`` when every value is, else ``"irregular"``."""
    seen = set(values)
    return seen.pop() if len(seen) == 1 and seen <= {True, False} else "irregular"


#: Methods whose (unquantized) layers the reference names without the method prefix (its ``repr`` has none).
_UNPREFIXED_METHODS = frozenset({"ia3", "trainable_tokens"})


def _module_type(module: nn.Module) -> str:
    """The reference's name of a layer's type: ``"lora.Linear"`` for a layer of ``peftkit.methods.lora``, the
    class name for IA3 and trainable-token layers and for anything else."""
    cls = type(module)
    parts = cls.__module__.split(".")
    if (
        isinstance(module, AdapterLayer)
        and parts[:2] == ["peftkit", "methods"]
        and len(parts) > 2
        and parts[2] not in _UNPREFIXED_METHODS
    ):
        return f"{parts[2]}.{cls.__name__}"
    return cls.__name__


def _layer_status(name: str, module: AdapterState) -> TunerLayerStatus:
    grads: dict[str, list[bool]] = collections.defaultdict(list)
    devices: dict[str, set[str]] = collections.defaultdict(set)
    for adapter, param in module.all_adapter_parameters():
        grads[adapter].append(param.requires_grad)
        devices[adapter].add(param.device.type)
    return TunerLayerStatus(
        name=name,
        module_type=_module_type(module),  # type: ignore[arg-type]  # every AdapterState is an nn.Module
        enabled=not module.disable_adapters,
        active_adapters=module.active_adapters,
        merged_adapters=list(getattr(module, "merged_adapters", [])),
        requires_grad={adapter: _agreement(flags) for adapter, flags in grads.items()},
        available_adapters=sorted(module.adapter_names()),
        devices={adapter: sorted(kinds) for adapter, kinds in devices.items()},
        quantization_backend=None,
    )


def _is_peft_model(model: nn.Module) -> bool:
    """Whether ``model`` is a :class:`peftkit.PeftModel` (by class identity along its MRO: ``PeftModel`` builds on
    this module for its ``get_layer_status`` / ``get_model_status`` methods, so it cannot be imported here)."""
    return any(c.__name__ == "PeftModel" and c.__module__ == "peftkit.peft_model" for c in type(model).__mro__)


def _tuner_of(model: Any, caller: str) -> nn.Module:
    if not _is_peft_model(model):
        return model
    if model._is_prompt_learning:
        raise ArgumentTypeError(f"{caller}() reports adapter layers; prompt-learning adapters have none.")
    return model.base_model


def get_layer_status(model: nn.Module) -> list[TunerLayerStatus]:
    """One :class:`TunerLayerStatus` per adapter layer and ``modules_to_save`` wrapper, in module order.

    Args:
        model: A ``PeftModel``, a transformers model with in-place adapters, or any module with adapter layers.

    Raises:
        ArgumentTypeError: a ``PeftModel`` of a prompt-learning method (it has no adapter layers).
        TargetingError: the model has no adapter layers.
    """
    tuner = _tuner_of(model, "get_layer_status")
    records = [_layer_status(name, m) for name, m in tuner.named_modules() if isinstance(m, AdapterState)]
    if not records:
        raise TargetingError("get_layer_status(): the model has no adapter layers; add or load an adapter first.")
    return records


def _is_pretrained_model(model: nn.Module) -> bool:
    """Whether ``model`` is a transformers ``PreTrainedModel`` (without importing transformers' models: a model
    can be one only once transformers has loaded them)."""
    modeling = sys.modules.get("transformers.modeling_utils")
    return modeling is not None and isinstance(model, modeling.PreTrainedModel)


def _merged(records: list[TunerLayerStatus]) -> list[str] | Irregular:
    """Adapters merged on some layer; ``"irregular"`` when one of them is held unmerged elsewhere."""
    merged = {adapter for r in records for adapter in r.merged_adapters}
    for r in records:
        if merged & (set(r.available_adapters) - set(r.merged_adapters)):
            return "irregular"
    return sorted(merged)


def _single(values: set) -> object:
    return values.pop() if len(values) == 1 else "irregular"


def get_model_status(model: Any) -> TunerModelStatus:
    """The adapter state of the whole model (see :class:`TunerModelStatus`).

    Raises:
        ArgumentTypeError: a ``PeftModel`` of a prompt-learning method.
        TargetingError: the model has no adapter layers.
    """
    records = get_layer_status(model)
    trainable, total = count_parameters(model)
    if _is_peft_model(model):
        base_type, adapter_type = type(model.get_base_model()).__name__, type(model.base_model).__name__
        peft_types = {name: _peft_type_name(config) for name, config in model.peft_config.items()}
    else:
        base_type = type(model).__name__ if _is_pretrained_model(model) else "other"
        adapter_type, peft_types = "None", {}
    grads: dict[str, list[bool | Irregular]] = collections.defaultdict(list)
    devices: dict[str, set[str]] = collections.defaultdict(set)
    for r in records:
        for adapter, flag in r.requires_grad.items():
            grads[adapter].append(flag)
        for adapter, kinds in r.devices.items():
            devices[adapter].update(kinds)
    actives = {tuple(r.active_adapters) for r in records}
    return TunerModelStatus(
        base_model_type=base_type,
        adapter_model_type=adapter_type,
        peft_types=peft_types,
        trainable_params=trainable,
        total_params=total,
        num_adapter_layers=len(records),
        enabled=_single({r.enabled for r in records}),  # type: ignore[arg-type]  # a bool or "irregular"
        active_adapters=list(actives.pop()) if len(actives) == 1 else "irregular",
        merged_adapters=_merged(records),
        requires_grad={adapter: _agreement(flags) for adapter, flags in grads.items()},
        available_adapters=sorted({a for r in records for a in r.available_adapters}),
        devices={adapter: sorted(kinds) for adapter, kinds in devices.items()},
        quantization_backend=_single({r.quantization_backend for r in records}),  # type: ignore[arg-type]  # str, None or "irregular"
    )


def _peft_type_name(config: object) -> str:
    """``config.peft_type`` as its on-disk string (``"LORA"``)."""
    peft_type = getattr(config, "peft_type", None)
    return str(getattr(peft_type, "value", peft_type))
