"""Activated LoRA (aLoRA; Greenewald et al., 2025, "Activated LoRA: Fine-tuned LLMs for Intrinsics"):
``LoraConfig(alora_invocation_tokens=[...])``.

An aLoRA adapter changes a causal LM only from the *invocation sequence* on: for sample ``i`` whose input ends
with ``k_i`` tokens counted from the start of the last occurrence of ``alora_invocation_tokens`` (its *offset*),
a layer's output at position ``t`` of ``T`` is

    y[i, t] = W x[i, t] + s B A dropout(x[i, t])   if t >= T - k_i
    y[i, t] = W x[i, t]                             otherwise

so everything before the invocation equals the base model, and the key/value cache built by the base model
for that prefix can be reused. A sample without the sequence (offset ``None``) runs the base model. During
``generate`` the offsets are computed once from the prompt; every later decoding step has ``T`` below its
offset and is adapted whole. Offsets are counted from the *end* of the input for that reason.

The offsets of a call live in :data:`~peftkit.layers.routing.CALL_STATE` (per thread), set by :func:`alora_call`
around ``PeftModel.forward`` / ``generate``. Linear layers only (as in PEFT); not mergeable (the delta depends
on the position). Not supported: beam search, and training with gradient
checkpointing (the recomputation in backward runs outside the call: refused rather than wrong gradients).
In a mixed batch (``adapter_names``) each row takes its own adapter's invocation, as in PEFT.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from peftkit.errors import ConfigError, UnsupportedError, UsageError
from peftkit.layers.routing import BASE_ADAPTER, CALL_STATE
from peftkit.methods.lora.variant import LoraVariant

if TYPE_CHECKING:
    from peftkit.methods.lora.layer import Linear

Offsets = list[int | None]


class ALoraLinearVariant(LoraVariant):
    """aLoRA on a Linear layer (PEFT's class name): the adapter applies to the last ``offset`` positions."""

    name: ClassVar[str] = "alora"
    mergeable: ClassVar[bool] = False

    def adapt_output(self, layer: Linear, result: torch.Tensor, x: torch.Tensor, adapter: str) -> torch.Tensor:
        """``result`` plus ``s B A dropout(x)`` on the positions selected by the call's offsets (module docstring);
        ``result`` unchanged when the call has none. ``x``: ``(batch, T, in)`` or ``(batch, in)`` (``T = 1``)."""
        offsets = CALL_STATE.alora_offsets
        if offsets is None:
            return result
        if CALL_STATE.routing is not None:  # a mixed batch: this adapter's rows only
            offsets = _offsets_of_rows(offsets, adapter, result.shape[0])
        mask = position_mask(offsets, result.shape[0], result.shape[1] if result.dim() == 3 else 1, result.device)
        rows = mask.reshape(-1).nonzero().squeeze(1)
        flat_x = x.reshape(-1, x.shape[-1]).index_select(0, rows)
        delta = layer.lora_out(layer.lora_dropout[adapter](flat_x), adapter).to(result.dtype)
        flat = result.reshape(-1, result.shape[-1]).index_add(0, rows, delta)
        return flat.view_as(result)


def _offsets_of_rows(offsets: Offsets, adapter: str, rows: int) -> Offsets:
    """The offsets of the ``rows`` samples of a mixed batch that ``adapter`` computes (in batch order; a batch
    that ``generate`` expanded ``k`` times has each row ``k`` times, as :class:`BatchRouting` routes it)."""
    routing = CALL_STATE.routing
    assert routing is not None
    position = routing.names.index(adapter)
    k = rows // max(int((routing.index == position).sum()), 1)
    full = routing.for_batch(len(routing) * k)
    expanded = [o for o in offsets for _ in range(k)]
    return [expanded[i] for i in (full.index == position).nonzero().flatten().tolist()]


def position_mask(offsets: Offsets, batch: int, length: int, device: torch.device) -> torch.Tensor:
    """``(batch, length)`` bool: ``True`` on the last ``offsets[i]`` positions of row ``i`` (none for ``None``).

    A batch ``k`` times longer than ``offsets`` (``generate`` expanding each row for ``num_return_sequences`` or
    sampling) repeats each row's offset ``k`` times, as it repeats the row.

    Raises:
        UsageError: the batch does not fit the offsets.
    """
    if batch != len(offsets):
        if not offsets or batch % len(offsets):
            raise UsageError(f"aLoRA: {len(offsets)} offsets for a batch of {batch} rows; pass one per row.")
        offsets = [o for o in offsets for _ in range(batch // len(offsets))]
    ends = torch.tensor([0 if o is None else min(int(o), length) for o in offsets], device=device)
    return torch.arange(length, device=device).unsqueeze(0) >= (length - ends).unsqueeze(1)


def build(config: Any, module_name: str, base_module: nn.Module) -> LoraVariant | None:
    """The aLoRA variant of a layer: Linear-like layers (``nn.Linear``, transformers' ``Conv1D``) only.

    Raises:
        ConfigError: another layer type is targeted (PEFT raises ``ValueError`` too).
    """
    if isinstance(base_module, nn.Linear) or type(base_module).__name__ == "Conv1D":
        return ALoraLinearVariant()
    raise ConfigError(
        f"aLoRA (alora_invocation_tokens) adapts Linear layers only; {module_name!r} is a "
        f"{type(base_module).__name__}. Leave it out of target_modules."
    )


def _last_start(sequence: torch.Tensor, invocation: torch.Tensor) -> int | None:
    """Start index of the last occurrence of ``invocation`` in ``sequence`` (1-D), or ``None``."""
    n = invocation.numel()
    if n == 0 or n > sequence.numel():
        return None
    windows = sequence.unfold(0, n, 1)  # (len - n + 1, n)
    hits = (windows == invocation).all(dim=1).nonzero()
    return int(hits[-1]) if hits.numel() else None


def calculate_alora_offsets(
    peft_config: Mapping[str, Any],
    active_adapter: str,
    input_ids: torch.Tensor | None,
    adapter_names: Sequence[str] | None = None,
) -> Offsets:
    """Each row's offset: ``len(row) - start`` of the last occurrence of its adapter's invocation sequence.

    Args:
        peft_config: Adapter name -> config.
        active_adapter: The adapter of every row, unless ``adapter_names`` names one per row.
        input_ids: ``(batch, T)`` token ids.

    Returns:
        One entry per row: the offset (``>= len(alora_invocation_tokens)``), or ``None`` where the row runs the base
        model (no invocation found, ``"__base__"``, an adapter that is no aLoRA, an unknown name: with a warning).
    """
    if input_ids is None:
        return []
    offsets: Offsets = []
    for i, sequence in enumerate(input_ids):
        name = adapter_names[i] if adapter_names and i < len(adapter_names) else active_adapter
        if name != BASE_ADAPTER and name not in peft_config:
            warnings.warn(
                f"aLoRA: adapter {name!r} of row {i} is not in the model; row {i} runs the base model.", stacklevel=2
            )
        tokens = getattr(peft_config.get(name), "alora_invocation_tokens", None) if name != BASE_ADAPTER else None
        start = None if tokens is None else _last_start(sequence, torch.tensor(tokens, device=sequence.device))
        offsets.append(None if start is None else sequence.numel() - start)
    return offsets


def is_alora_relevant_in_batch(model: Any, adapter_names: Sequence[str] | None = None) -> bool:
    """Whether the active adapter, or one of ``adapter_names``, is an aLoRA adapter."""
    configs = model.peft_config
    names = [n for n in adapter_names or () if n != BASE_ADAPTER] + list(model.active_adapters)
    return any(getattr(configs.get(n), "alora_invocation_tokens", None) for n in names)


def get_alora_offsets_for_forward(
    model: Any, input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None, **kwargs: Any
) -> dict[str, Any]:
    """``kwargs`` with ``alora_offsets`` computed from ``input_ids`` when the batch uses an aLoRA adapter and none
    were passed (``None``, with a warning, when only ``inputs_embeds`` is given: the invocation cannot be found)."""
    names = kwargs.get("adapter_names")
    if not is_alora_relevant_in_batch(model, names) or kwargs.get("alora_offsets") is not None:
        return kwargs
    if input_ids is None and inputs_embeds is not None:
        warnings.warn(
            "aLoRA: only inputs_embeds were given, so the invocation cannot be found; adapter off.", stacklevel=2
        )
    active = model.active_adapters[0]
    found = None if input_ids is None else calculate_alora_offsets(model.peft_config, active, input_ids, names)
    kwargs["alora_offsets"] = found
    return kwargs


def get_alora_offsets_for_generate(model: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """:func:`get_alora_offsets_for_forward` for ``generate``'s arguments (``input_ids`` by keyword or first)."""
    if not is_alora_relevant_in_batch(model, kwargs.get("adapter_names")) or kwargs.get("alora_offsets") is not None:
        return kwargs
    input_ids = kwargs.get("input_ids")
    if input_ids is None and args and isinstance(args[0], torch.Tensor):
        input_ids = args[0]
    if input_ids is None:
        warnings.warn("aLoRA: generate got no input_ids, so the invocation cannot be found; adapter off.", stacklevel=2)
        kwargs["alora_offsets"] = None
        return kwargs
    ids = input_ids.unsqueeze(0) if input_ids.dim() == 1 else input_ids
    kwargs["alora_offsets"] = calculate_alora_offsets(
        model.peft_config, model.active_adapters[0], ids, kwargs.get("adapter_names")
    )
    return kwargs


def _check_call(model: Any, kwargs: Mapping[str, Any], offsets: Offsets | None) -> None:
    if offsets is None:
        return
    beams = kwargs.get("num_beams")
    if isinstance(beams, int) and beams > 1:
        raise UsageError("aLoRA does not support beam search (num_beams > 1); use greedy decoding or sampling.")
    checkpointed = any(getattr(m, "gradient_checkpointing", False) is True for m in model.get_base_model().modules())
    if model.training and checkpointed:  # transformers' flag on each checkpointed layer
        raise UnsupportedError(
            "aLoRA cannot train with gradient checkpointing in peftkit (the recomputation would not see the "
            "offsets); call gradient_checkpointing_disable()."
        )


@contextmanager
def alora_call(
    model: Any,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    adapter_names: Sequence[str] | None = None,
    generate: bool = False,
) -> Iterator[None]:
    """Around one ``forward`` / ``generate`` of ``model`` (a ``PeftModel``): take ``alora_offsets`` out of
    ``kwargs`` (computed from ``input_ids`` for a causal LM when the batch uses an aLoRA adapter and none were
    passed) and hold them in :data:`CALL_STATE` for the layers.

    Raises:
        UsageError: offsets with beam search. UnsupportedError: offsets with gradient checkpointing while training.
    """
    configs = model.peft_config.values()
    if "alora_offsets" not in kwargs and not any(getattr(c, "alora_invocation_tokens", None) for c in configs):
        yield
        return
    task = getattr(model.active_peft_config, "task_type", None)
    if getattr(task, "value", task) == "CAUSAL_LM":  # PEFT finds the invocation for causal LMs only
        rest = {k: v for k, v in kwargs.items() if k not in ("input_ids", "inputs_embeds")}
        if generate:
            found = get_alora_offsets_for_generate(model, *args, adapter_names=adapter_names, **kwargs)
        else:
            ids = kwargs.get("input_ids", args[0] if args and isinstance(args[0], torch.Tensor) else None)
            found = get_alora_offsets_for_forward(
                model, ids, kwargs.get("inputs_embeds"), adapter_names=adapter_names, **rest
            )
        kwargs["alora_offsets"] = found.get("alora_offsets")
    offsets = kwargs.pop("alora_offsets", None)
    _check_call(model, kwargs, offsets)
    previous, CALL_STATE.alora_offsets = CALL_STATE.alora_offsets, offsets
    try:
        yield
    finally:
        CALL_STATE.alora_offsets = previous
