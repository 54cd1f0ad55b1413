"""The entry of a compiled call: refresh, eagerly, what the adapter layers' compiled paths read.

Under ``torch.compile`` an adapter layer may read tensors built outside the graph (LoRA: its active adapters'
factors, concatenated with the scalings folded in) instead of rebuilding them from the live weights in every
call. Those tensors must never be stale, and a graph cannot check that itself (a weight edited in place looks
the same to dynamo's guards), so the inference entry points (``PeftModel.forward`` / ``generate``, the
transformers model's call), which ``torch.compile`` runs eagerly (:mod:`peftkit.compile_frames`), call
:func:`prepared_call`: every layer refreshes what changed (:meth:`~peftkit.layers.base.AdapterLayer.prepare_compiled`)
and ``CALL_STATE.prepared`` tells the graph it may read them. A model compiled below its entry point never
sets it, and its layers keep building from the live weights.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from peftkit.compile_frames import eager_frame
from peftkit.layers.base import CALL_STATE, AdapterLayer
from peftkit.layers.walk import iter_adapter_modules
from peftkit.layers.watch import ModelWatch
from peftkit.locking import ModelLock, lock_of

#: Per model (its lock): the lock's generation and the layers that prepare something, found again after any
#: change of the adapter state (which bumps the generation).
_LAYERS: weakref.WeakKeyDictionary[ModelLock, tuple[int, list[AdapterLayer]]] = weakref.WeakKeyDictionary()
#: Per model (its lock): what its layers' prepared tensors were last built from, where every layer said so.
_WATCHES: weakref.WeakKeyDictionary[ModelLock, ModelWatch] = weakref.WeakKeyDictionary()


@eager_frame  # never traced itself (dynamo cannot trace the callback query)
def compiling_below() -> bool:
    """Whether ``torch.compile`` is active for the frames this (eagerly run) entry point calls: dynamo's frame
    callback is set. ``False`` where the installed torch does not expose it (the layers then stack in the graph)."""
    eval_frame = getattr(getattr(torch._C, "_dynamo", None), "eval_frame", None)
    callback = getattr(eval_frame, "get_eval_frame_callback", None)
    return callback is not None and callback() not in (None, False)


def _preparing_layers(model: nn.Module) -> list[AdapterLayer]:
    """The layers of ``model`` that prepare something (the same list object until the lock generation moves)."""
    lock = lock_of(model)
    cached = _LAYERS.get(lock)
    if cached is None or cached[0] != lock.generation:
        hook = AdapterLayer.prepare_compiled
        layers = [m for _, m in iter_adapter_modules(model) if isinstance(m, AdapterLayer)]
        cached = _LAYERS[lock] = (lock.generation, [m for m in layers if type(m).prepare_compiled is not hook])
    return cached[1]


@eager_frame  # the common case, one flat check, runs as is (no wrapper); a rebuild runs with dynamo off
def _prepare(model: nn.Module, training: bool) -> bool:
    """Refresh every layer of ``model`` for a compiled call; ``False`` (nothing done) when nested in another
    prepared call or while ``training`` (the compiled paths are for inference)."""
    if training or CALL_STATE.prepared:
        return False
    lock = lock_of(model)
    cached, held = _LAYERS.get(lock), _WATCHES.get(lock)
    if cached is None or cached[0] != lock.generation or held is None or not held.fresh(cached[1]):
        _rebuild(model, lock)
    CALL_STATE.prepared = True
    return True


@torch.compiler.disable
def _rebuild(model: nn.Module, lock: ModelLock) -> None:
    """Every preparing layer of ``model`` checks itself (and rebuilds what changed); their watches are kept
    where all of them gave one."""
    layers = _preparing_layers(model)
    watches = [layer.prepare_compiled() for layer in layers]
    if all(watch is not None for watch in watches):
        _WATCHES[lock] = ModelWatch(layers, [w for w in watches if w is not None])
    else:
        _WATCHES.pop(lock, None)


@eager_frame  # sets a flag: no tensor work to keep out of a graph
def _finish() -> None:
    CALL_STATE.prepared = False


@contextmanager
@eager_frame  # never traced: what it checks is whether dynamo is active below it
def prepared_call(model: nn.Module, training: bool = False) -> Iterator[None]:
    """Inside a compiled inference call of ``model``: its layers prepared and ``CALL_STATE.prepared`` set for
    the block."""
    if not compiling_below() or not _prepare(model, training):  # checked here: _prepare runs with dynamo off
        yield
        return
    try:
        yield
    finally:
        _finish()
