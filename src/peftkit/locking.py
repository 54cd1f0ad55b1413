"""One readers-writer lock per model: forwards share it, changes to its adapters take it alone.

Several threads may run inference on one model at once (each call's mixed-batch routing is per thread, see
:mod:`peftkit.layers.base`). What must not overlap a forward is a change of the adapter state the forward
reads: ``set_adapter``, adding, loading, hot-swapping or deleting an adapter, merging, enabling/disabling.
So every inference entry point (``PeftModel.forward`` / ``generate``, the transformers model's call and
``generate`` once it has adapters, :func:`peftkit.functional.mixed_batch`) holds the model's lock shared, and
every function of the functional core that changes adapter state holds it exclusively (:func:`exclusive`):
a change waits for the forwards in flight and forwards started meanwhile wait for it, so each call sees the
adapters as they were when it began, never half-switched weights.

The lock is reentrant within a thread (``generate`` calls ``forward``; a forward may run inside a
``disable_adapter()`` block of the same thread). A change requested by a thread from inside a forward of the
same model could never proceed, so it raises :class:`~peftkit.errors.ConcurrencyError` instead.
Writers are preferred: once a change waits, new forwards queue behind it.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import nn

from peftkit.compile_frames import eager_frame
from peftkit.errors import ConcurrencyError

_F = TypeVar("_F", bound=Callable[..., Any])
_ATTRIBUTE = "_peftkit_lock"
_CREATING = threading.Lock()


class ModelLock:
    """Readers-writer lock, reentrant per thread, writer-preferring. Pickles (and deep-copies) as a fresh lock."""

    def __init__(self) -> None:
        self._state = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer: int | None = None
        self._writer_depth = 0
        self._writers_waiting = 0
        self._local = threading.local()
        #: Bumped when a change of the adapter state ends (what caches derived from that state compare).
        self.generation = 0

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return ModelLock, ()

    @eager_frame  # run as is under torch.compile: no wrapper per forward
    def acquire_shared(self) -> None:
        """Enter a forward (nested entries of one thread are free)."""
        local = self._local
        depth = getattr(local, "depth", 0)
        if depth:
            local.depth = depth + 1
            return
        counted = self._writer != threading.get_ident()  # inside this thread's own change: already exclusive
        if counted:
            with self._state:
                while self._writer is not None or self._writers_waiting:
                    self._state.wait()
                self._readers += 1
        local.depth, local.counted = 1, counted

    @eager_frame  # run as is under torch.compile: no wrapper per forward
    def release_shared(self) -> None:
        """Leave a forward."""
        local = self._local
        local.depth -= 1
        if local.depth == 0 and local.counted:
            with self._state:
                self._readers -= 1
                if not self._readers:
                    self._state.notify_all()

    @torch.compiler.disable
    def acquire_exclusive(self, what: str) -> None:
        """Enter a change of the adapter state (``what`` names it for the error message).

        Raises:
            ConcurrencyError: this thread is inside a forward or ``generate`` of the same model.
        """
        me = threading.get_ident()
        if self._writer == me:
            self._writer_depth += 1
            return
        if getattr(self._local, "depth", 0):
            raise ConcurrencyError(
                f"{what} was called from inside a forward or generate of the same model (e.g. from a hook or a "
                "logits processor); change adapters before or after the call instead."
            )
        with self._state:
            self._writers_waiting += 1
            while self._writer is not None or self._readers:
                self._state.wait()
            self._writers_waiting -= 1
            self._writer, self._writer_depth = me, 1

    @torch.compiler.disable
    def release_exclusive(self) -> None:
        """Leave a change of the adapter state."""
        self._writer_depth -= 1
        if not self._writer_depth:
            with self._state:
                self.generation += 1
                self._writer = None
                self._state.notify_all()

    @contextmanager
    def shared(self) -> Iterator[None]:
        """Hold the lock shared for the block (a forward)."""
        self.acquire_shared()
        try:
            yield
        finally:
            self.release_shared()

    @contextmanager
    def exclusive(self, what: str = "Changing adapters") -> Iterator[None]:
        """Hold the lock exclusively for the block (a change; ``what`` names it in errors)."""
        self.acquire_exclusive(what)
        try:
            yield
        finally:
            self.release_exclusive()


@eager_frame  # called by the entry points, which torch.compile runs eagerly
def lock_of(model: nn.Module) -> ModelLock:
    """The lock of ``model``'s adapter state, kept on the model that holds the adapter layers (a ``PeftModel``
    and a compiled wrapper share the lock of the model inside them)."""
    model = getattr(model, "_orig_mod", model)
    get_base_model = getattr(type(model), "get_base_model", None)
    if get_base_model is not None and "base_model" in model._modules:
        model = get_base_model(model)
    lock = model.__dict__.get(_ATTRIBUTE)
    if lock is None:
        with _CREATING:
            lock = model.__dict__.setdefault(_ATTRIBUTE, ModelLock())
    return lock


def exclusive(function: _F) -> _F:
    """Run ``function(model, ...)`` holding ``model``'s lock exclusively (see the module docstring)."""

    @functools.wraps(function)
    def run(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        with lock_of(model).exclusive(f"{function.__name__}()"):
            return function(model, *args, **kwargs)

    return run  # type: ignore[return-value]
