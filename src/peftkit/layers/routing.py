"""Mixed-batch routing: which adapter each sample of a batch uses, and where the call in progress keeps it.

:class:`BatchRouting` is built once per call from the per-sample adapter names; :data:`CALL_STATE` holds it for
the thread running the call, and every adapter layer reads it from there (never from the shared layers).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from peftkit.errors import AdapterNameError, UsageError

_T = TypeVar("_T")

#: The name that routes a sample of a mixed batch to the bare base model.
BASE_ADAPTER = "__base__"


def check_adapter_name(name: str, existing: Sequence[str] = ()) -> None:
    """Reject names that cannot be used as a ``ModuleDict`` key or in a state-dict key, or are taken."""
    if not isinstance(name, str) or not name or "." in name or name == BASE_ADAPTER:
        raise AdapterNameError(
            f"Invalid adapter name {name!r}: use a non-empty string without '.', other than {BASE_ADAPTER!r}."
        )
    if name in existing:
        raise AdapterNameError(f"An adapter named {name!r} already exists; pick another name or delete it first.")


@dataclass
class BatchRouting:
    """Which adapter each sample of a batch uses; built once per forward for the whole model.

    Attributes:
        names: The distinct adapter names of the batch, in order of first appearance.
        index: ``(batch,)`` long tensor: the position in ``names`` of each sample's adapter.
        adapters: Every adapter of the model, sorted (the slot order of stacked layers).
        slots: ``(batch,)`` long tensor: the position in ``adapters`` of each sample's adapter.
    """

    names: tuple[str, ...]
    index: torch.Tensor
    adapters: tuple[str, ...] = ()
    slots: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    expand: bool = False
    _groups: dict[torch.device, list[tuple[str, torch.Tensor]]] = field(default_factory=dict, repr=False)
    _expanded: dict[int, BatchRouting] = field(default_factory=dict, repr=False)
    _derived: dict[Hashable, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_names(cls, per_sample: Sequence[str], adapters: Sequence[str] = (), expand: bool = False) -> BatchRouting:
        """Build the routing of ``per_sample`` (one adapter name per sample).

        Args:
            adapters: Every adapter of the model, in a fixed order: ``slots`` gives each sample's position in
                it (``len(adapters)`` for the base model or an unknown name), the same for every layer.
            expand: Also route batches of ``k * len(per_sample)`` samples, sample ``i`` taking
                ``per_sample[i // k]``: how ``generate`` expands a batch for beams, ``num_return_sequences``
                and sampling (``repeat_interleave``), while an encoder still sees the original batch.
        """
        names = tuple(dict.fromkeys(per_sample))
        position = {name: i for i, name in enumerate(names)}
        slot = {name: i for i, name in enumerate(adapters)}
        slots = torch.tensor([slot.get(n, len(adapters)) for n in per_sample], dtype=torch.long)
        index = torch.tensor([position[n] for n in per_sample], dtype=torch.long)
        return cls(names, index, tuple(adapters), slots, expand)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def for_batch(self, batch: int) -> BatchRouting:
        """This routing for a batch of ``batch`` samples (itself, or expanded; see :meth:`from_names`).

        Raises:
            UsageError: ``batch`` is not the number of names (or, with ``expand``, a multiple of it).
        """
        count = len(self)
        if batch == count:
            return self
        if not (self.expand and count and batch % count == 0):
            message = f"adapter_names has {count} entries but the batch has {batch} samples"
            raise UsageError(message + "; pass one adapter name per sample.")
        if batch not in self._expanded:
            k = batch // count
            index, slots = self.index.repeat_interleave(k), self.slots.repeat_interleave(k)
            self._expanded[batch] = BatchRouting(self.names, index, self.adapters, slots)
        return self._expanded[batch]

    def index_on(self, device: torch.device) -> torch.Tensor:
        """The per-sample index on ``device`` (moved once, then cached)."""
        if self.index.device != device:
            self.index = self.index.to(device)
        return self.index

    def slots_on(self, device: torch.device) -> torch.Tensor:
        """The per-sample slots on ``device`` (moved once, then cached)."""
        if self.slots.device != device:
            self.slots = self.slots.to(device)
        return self.slots

    def derived(self, key: Hashable, build: Callable[[], _T]) -> _T:
        """``build()``, computed once per routing and ``key`` (e.g. a method's segment plan on a device) and
        shared by every layer of the call."""
        if key not in self._derived:
            self._derived[key] = build()
        return self._derived[key]

    def groups(self, device: torch.device) -> list[tuple[str, torch.Tensor]]:
        """``[(name, sample_indices)]`` for each distinct adapter, computed once per device."""
        if device not in self._groups:
            index = self.index_on(device)
            self._groups[device] = [(name, (index == i).nonzero().flatten()) for i, name in enumerate(self.names)]
        return self._groups[device]


class CallState(threading.local):
    """What the forward running in this thread needs beyond its inputs: ``routing``, the mixed batch's routing
    (``None`` outside one), and ``prepared``; set by the outer call (``PeftModel``,
    :func:`peftkit.functional.mixed_batch`) and read by every adapter layer. Per thread, so concurrent calls on
    one model do not see each other's routing; traceable by ``torch.compile``, unlike a ``ContextVar``."""

    def __init__(self) -> None:
        # Once per thread. An instance attribute: torch.compile guards on it, but reads a class default as a constant.
        self.routing: BatchRouting | None = None
        #: ``True`` inside a compiled call whose entry point refreshed the layers' precomputed factors
        #: (:meth:`~peftkit.layers.base.AdapterLayer.prepare_compiled`), so the graph may read them.
        self.prepared: bool = False
        #: Activated LoRA's per-row offsets for this call (positions adapted, counted from the end; ``None``
        #: entries: none), set around the call by ``methods.lora.variants.alora.alora_call``.
        self.alora_offsets: list[int | None] | None = None


#: The per-thread call state of every model.
CALL_STATE = CallState()


def call_routed(layer: Any, names: Sequence[str], call: Callable[[], _T]) -> _T:
    """Run ``call`` (a forward of ``layer`` alone) with sample ``i`` of the batch routed to ``names[i]``
    (``BASE_ADAPTER`` for the bare layer), the layer's adapters in sorted order as the slots.

    Unlike a model's mixed batch, this also runs in training mode (as PEFT's layers do): each group of samples
    takes the generic per-adapter path, which records gradients.

    Raises:
        AdapterNameError: a name the layer does not hold.
    """
    held = layer.adapter_names()
    unknown = sorted(set(names) - held - {BASE_ADAPTER})
    if unknown:
        raise AdapterNameError(f"adapter_names names adapters this layer does not hold: {unknown}.")
    previous = CALL_STATE.routing
    CALL_STATE.routing = BatchRouting.from_names(list(names), sorted(held))
    try:
        return call()
    finally:
        CALL_STATE.routing = previous
