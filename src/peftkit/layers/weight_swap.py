"""Running a module with some of its tensors replaced for one call.

Adapters that change a weight no forward of theirs reads (LoRA on a bare parameter, LoRA on the input projection
of ``nn.MultiheadAttention``) run the base module with ``W + delta`` in the weight's place, then put ``W`` back;
gradients reach the adapter through ``delta``.

A module attribute can live in two places: the module's parameter table, and -- while FSDP (``use_orig_params``)
runs a forward -- the instance ``__dict__``, where FSDP puts its unsharded view as a plain tensor, which then
shadows the table. A replacement writes every place that holds the name, so the module reads it either way.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

#: Held while a module runs with swapped-in tensors (re-entrant: swaps nest): another thread must not see them, nor
#: restore them under this one.
SWAP_LOCK = threading.RLock()

_ABSENT = object()


@contextmanager
def swapped_tensors(swaps: Sequence[tuple[nn.Module, str, torch.Tensor]]) -> Iterator[None]:
    """Within the block, ``module.<name>`` reads ``tensor`` for each ``(module, name, tensor)`` of ``swaps``; the
    originals are back afterwards, also when the block raises. Holds :data:`SWAP_LOCK` for the block; a caller
    that computes ``tensor`` from the module's current weight takes the lock before reading it."""
    with SWAP_LOCK:
        saved: list[tuple[nn.Module, str, object, object]] = []
        try:
            for module, name, tensor in swaps:
                table = module._parameters.get(name, _ABSENT) if name in module._parameters else _ABSENT
                plain = module.__dict__.get(name, _ABSENT)
                saved.append((module, name, table, plain))
                module._parameters[name] = tensor  # type: ignore[assignment]  # a tensor in a parameter's place, for the call
                if plain is not _ABSENT:
                    module.__dict__[name] = tensor
            yield
        finally:
            for module, name, table, plain in reversed(saved):
                if table is _ABSENT:
                    del module._parameters[name]
                else:
                    module._parameters[name] = table  # type: ignore[assignment]  # what was there before
                if plain is not _ABSENT:
                    module.__dict__[name] = plain
