"""Where adapter tensors live: next to their layer's weights, on ``meta`` for a low-memory injection, and
through accelerate's offload hooks for bases dispatched with ``device_map`` (CPU or disk offload).

accelerate's ``AlignDevicesHook`` with ``offload=True`` keeps an offloaded layer's weights on ``meta`` and loads
them from its ``weights_map`` (CPU memory or files on disk) onto ``execution_device`` for each forward. Adapter
tensors are small, so they are kept, materialised, on that execution device: the base layer's hook then does
its work unchanged, and the adapter's math runs where the base output is.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import nn

_ON_META: ContextVar[bool] = ContextVar("peftkit_adapters_on_meta", default=False)


@contextmanager
def adapters_on_meta(enabled: bool = True) -> Iterator[None]:
    """Within the block, new adapter tensors are allocated on the ``meta`` device (``low_cpu_mem_usage``):
    no memory and no initialisation, for adapters whose values a load assigns next."""
    token = _ON_META.set(enabled)
    try:
        yield
    finally:
        _ON_META.reset(token)


def infer_device() -> str:
    """PEFT's ``infer_device``: the type of the accelerator torch would use (``"cuda"``, ``"xpu"``, ``"mps"``...),
    ``"cpu"`` without one."""
    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    return accelerator.type if accelerator is not None else "cpu"


def offload_hook(module: nn.Module) -> Any | None:
    """Accelerate's ``AlignDevicesHook`` with ``offload=True`` on ``module`` (inside a ``SequentialHook`` too)."""
    hook = module.__dict__.get("_hf_hook")  # accelerate sets a plain attribute (no ``__getattr__`` miss)
    for candidate in [hook, *getattr(hook, "hooks", ())]:
        if candidate is not None and getattr(candidate, "offload", False) and hasattr(candidate, "weights_map"):
            return candidate
    return None


def execution_device(module: nn.Module) -> torch.device | None:
    """The device an accelerate hook on ``module`` computes on, if it has one."""
    hook = module.__dict__.get("_hf_hook")  # accelerate sets a plain attribute (no ``__getattr__`` miss)
    for candidate in [hook, *getattr(hook, "hooks", ())]:
        device = getattr(candidate, "execution_device", None)
        if device is not None:
            return torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
    return None


def base_weight(module: nn.Module) -> torch.Tensor:
    """``module.weight`` of a weight-carrying layer, read from its parameters when it is one: without
    ``nn.Module.__getattr__`` (a failed normal lookup first), which injection would pay several times per layer."""
    weight = module._parameters.get("weight")
    return weight if weight is not None else module.weight  # type: ignore[return-value]  # a tensor attribute


def adapter_device(base: nn.Module, *, allow_meta: bool = True) -> torch.device:
    """The device for new adapter tensors of the layer wrapping ``base``.

    * inside :func:`adapters_on_meta` (and ``allow_meta``): ``meta``;
    * the base weight's device when it holds values;
    * for an offloaded base (weights on ``meta``, an accelerate hook): the hook's execution device;
    * otherwise (a base built on ``meta``): ``meta``.
    """
    if allow_meta and _ON_META.get():
        return torch.device("meta")
    weight = base_weight(base)
    if weight.device.type != "meta":
        return weight.device
    return execution_device(base) or weight.device


def assign_parameter(model: nn.Module, source: str, value: torch.Tensor) -> None:
    """Replace the tensor at state-dict key ``source`` by ``value`` (used where the live tensor is on ``meta``,
    where a copy would silently do nothing), keeping its ``requires_grad`` and dtype."""
    module_name, _, leaf = source.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    old = module._parameters.get(leaf)
    if old is not None:
        module._parameters[leaf] = nn.Parameter(value.to(old.dtype), requires_grad=old.requires_grad)
    else:
        buffer = module._buffers[leaf]
        module._buffers[leaf] = value if buffer is None else value.to(buffer.dtype)


@contextmanager
def onloaded(module: nn.Module, write_back: bool = True) -> Iterator[None]:
    """Within the block, an offloaded ``module``'s weights hold their values on the execution device; with
    ``write_back``, what the block writes into them is stored back into the offload (memory or disk map).

    Does nothing for a module without an offload hook.
    """
    hook = offload_hook(module)
    if hook is None:
        yield
        return
    hook.pre_forward(module)
    try:
        yield
        for name, tensor in module.named_parameters(recurse=False) if write_back else ():
            _store(hook.weights_map, name, tensor.detach().to("cpu", copy=True))
    finally:
        hook.post_forward(module, None)


def _store(weights_map: Any, name: str, value: torch.Tensor) -> None:
    """Write ``value`` under ``name`` into accelerate's weights map (a ``PrefixedDataset`` over a dict or an
    ``OffloadedWeightsLoader``, whose in-memory ``state_dict`` takes precedence over the files on disk)."""
    prefix = getattr(weights_map, "prefix", "")
    dataset = getattr(weights_map, "dataset", weights_map)
    target = dataset.state_dict if hasattr(dataset, "state_dict") and isinstance(dataset.state_dict, dict) else dataset
    target[prefix + name] = value
