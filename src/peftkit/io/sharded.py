"""Adapter state of sharded, partitioned and wrapped models: pick it from a gathered state dict, gather it
collectively, and refuse to write tensors that are not the full values.

Under FSDP2 (``fully_shard``) each parameter is a ``DTensor`` holding one shard; under DeepSpeed ZeRO-3 a
parameter's own storage is empty (``numel() == 0``, the full shape in ``ds_shape``) outside a gather. Reading
either directly gives no adapter. Two correct ways exist:

* a full state dict gathered by the engine (``torch.distributed.checkpoint.state_dict.get_model_state_dict``
  with ``full_state_dict=True``, accelerate's ``get_state_dict``, DeepSpeed's consolidated 16-bit state dict),
  from which :func:`select_state` picks the adapter's tensors by key, whatever wrapper prefixes it carries;
* :func:`gather_adapter_state`, called on *every* rank, which gathers only the adapter's tensors.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from peftkit.errors import CheckpointError, PeftWarning
from peftkit.io.keys import match_keys, strip_wrapper_segments

if TYPE_CHECKING:
    from peftkit.io.state import AdapterTensor

_SHOWN = 5
_HOW_TO_GATHER = (
    "Save from a gathered state dict instead: on every rank compute `sd = torch.distributed.checkpoint.state_dict."
    "get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))` (FSDP2) or let "
    "the Trainer save (DeepSpeed ZeRO-3), then call `model.save_pretrained(dir, state_dict=sd, is_main_process="
    "rank == 0)`; or pass `state_dict=peftkit.gather_peft_model_state_dict(model)` (called on every rank: it gathers "
    "the adapter's tensors only)."
)


def unwrap_parallel(model: Any) -> Any:
    """The model inside DDP / DataParallel / FSDP1 / DeepSpeed engine / ``torch.compile`` wrappers.

    Each of these keeps the user's model in ``module`` (``_orig_mod`` for a compiled model) and adds that name
    to every state-dict key, which an adapter file must never carry.
    """
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while True:
        if isinstance(model, (DistributedDataParallel, DataParallel)) or _is_engine(model):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def _is_engine(model: nn.Module) -> bool:
    """FSDP1's ``FullyShardedDataParallel`` or DeepSpeed's engine (recognised without importing deepspeed)."""
    if isinstance(getattr(model, "module", None), nn.Module) is False:
        return False
    from torch.distributed.fsdp import FullyShardedDataParallel

    return isinstance(model, FullyShardedDataParallel) or type(model).__module__.startswith("deepspeed.")


def unwritable_reason(tensor: torch.Tensor) -> str | None:
    """Why ``tensor`` is not a full value that can be written to a file, or ``None`` when it is."""
    if type(tensor).__name__ == "DTensor":
        return "a DTensor (one shard of an FSDP2-sharded parameter)"
    if tensor.is_meta:
        return "on the meta device (no values: load or materialise the adapter first)"
    if tensor.dim() == 1 and tensor.numel() == 0:  # ZeRO-3's placeholder; (0, n) is a legit pruned AdaLoRA rank
        return "empty, shape (0,) (partitioned by DeepSpeed ZeRO-3, or otherwise not gathered)"
    return None


def check_writable(tensors: Mapping[str, torch.Tensor]) -> None:
    """Raise before anything is written when a tensor is sharded, partitioned, empty or on meta.

    Raises:
        CheckpointError: naming the first offending keys, why, and how to save correctly.
    """
    bad = [(key, reason) for key, t in tensors.items() if (reason := unwritable_reason(t)) is not None]
    if not tensors or not bad:
        return
    shown = "; ".join(f"{key}: {reason}" for key, reason in bad[:_SHOWN])
    more = f" (and {len(bad) - _SHOWN} more)" if len(bad) > _SHOWN else ""
    raise CheckpointError(f"Refusing to save adapter tensors that are not full values: {shown}{more}. {_HOW_TO_GATHER}")


def warn_flattened(tensors: Mapping[str, torch.Tensor], adapter: str) -> None:
    """Warn (:class:`~peftkit.errors.PeftWarning`) when a LoRA factor (``lora_A`` / ``lora_B`` weight, a matrix
    or a kernel) has fewer than 2 dimensions: a flat shard of FSDP1 or DeepSpeed ZeRO-3 saved without being
    gathered. The file is written all the same, as PEFT writes it (a caller may save shards on purpose)."""
    flat = [
        f"{key}: {tuple(t.shape)}"
        for key, t in tensors.items()
        if (".lora_A." in key or ".lora_B." in key) and key.endswith("weight") and t.dim() < 2
    ]
    if flat:
        more = f" (and {len(flat) - _SHOWN} more)" if len(flat) > _SHOWN else ""
        warnings.warn(
            f"Adapter {adapter!r} is saved with flattened LoRA factors ({'; '.join(flat[:_SHOWN])}{more}): these "
            "are DeepSpeed ZeRO-3 / FSDP shards that were not gathered, and the file will not load. " + _HOW_TO_GATHER,
            PeftWarning,
            stacklevel=4,
        )


def select_state(
    model: nn.Module, entries: Mapping[str, AdapterTensor], state_dict: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The adapter's tensors (on-disk keys) taken from ``state_dict``, a full state dict of the model or of any
    wrapper around it (``module.``, ``_orig_mod.``, ``base_model.model.``, ``_fsdp_wrapped_module.`` prefixes),
    or an adapter state dict keyed as on disk (:func:`peftkit.gather_peft_model_state_dict`).

    Args:
        entries: :func:`peftkit.io.state.adapter_tensors` of ``model`` (what the file must hold).

    Raises:
        CheckpointError: a required tensor is absent, sharded, empty, or has another shape than the model's.
    """
    by_source = {disk: disk for disk in entries}  # already keyed as on disk (e.g. gathered adapter-only)
    by_source.update({strip_wrapper_segments(entry.source): disk for disk, entry in entries.items()})
    found = {by_source[source]: state_dict[key] for key, source in match_keys(state_dict.keys(), by_source).items()}
    missing = sorted(disk for disk, entry in entries.items() if entry.required and disk not in found)
    if missing and not state_dict:
        raise CheckpointError(
            "The state_dict passed to save is empty. A full state dict gathered with cpu_offload=True exists on "
            "rank 0 only (and DeepSpeed gives {} without stage3_gather_16bit_weights_on_model_save): save on rank 0."
        )
    if missing:
        raise CheckpointError(
            f"The state_dict passed to save lacks {len(missing)} adapter tensors (e.g. {', '.join(missing[:_SHOWN])});"
            " pass the full state dict of this model (gathered on every rank), not a shard or another model's."
        )
    check_writable(found)
    wrong = [
        (disk, tuple(t.shape), shape)
        for disk, t in found.items()
        if (shape := logical_shape(model, entries[disk])) is not None and tuple(t.shape) != shape
    ]
    if wrong:
        shown = "; ".join(f"{k}: state_dict {a} vs model {b}" for k, a, b in wrong[:_SHOWN])
        raise CheckpointError(f"The state_dict passed to save has partial or foreign tensors ({shown}).")
    return found


def logical_shape(model: nn.Module, entry: AdapterTensor) -> tuple[int, ...] | None:
    """The full shape of an adapter tensor, also when its live storage is a ZeRO-3 partition (``ds_shape``)."""
    if entry.tensor.numel() > 0 or not entry.source:
        return tuple(entry.tensor.shape)
    try:
        param = model.get_parameter(entry.source)
    except AttributeError:
        return None
    shape = getattr(param, "ds_shape", None)
    return tuple(shape) if shape is not None else None


def gather_adapter_state(model: nn.Module, entries: Mapping[str, AdapterTensor]) -> dict[str, torch.Tensor]:
    """The full values of ``entries`` on the CPU, gathering FSDP2 shards and ZeRO-3 partitions.

    A collective: call it on every rank of the process group (each gets the full tensors), e.g. before
    ``save_pretrained(dir, state_dict=..., is_main_process=rank == 0)``.
    """
    params = {disk: _parameter(model, entry) for disk, entry in entries.items()}
    partitioned = [p for p in params.values() if p is not None and hasattr(p, "ds_id")]
    with ExitStack() as stack:
        if partitioned:
            import deepspeed

            stack.enter_context(deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None))
        out: dict[str, torch.Tensor] = {}
        for disk, entry in entries.items():
            live: Any = params[disk] if params[disk] is not None else entry.tensor  # a DTensor has full_tensor()
            value = live.full_tensor() if type(live).__name__ == "DTensor" else live
            out[disk] = value.detach().to("cpu", copy=True)
    return out


def _parameter(model: nn.Module, entry: AdapterTensor) -> torch.Tensor | None:
    if not entry.source:
        return None
    module_name, _, leaf = entry.source.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    return module._parameters.get(leaf)
