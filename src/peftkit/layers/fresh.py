"""Module objects built without ``nn.Module``'s generic constructor and ``__setattr__`` paths.

PEFT's layout gives every adapted layer about ten ``nn.Module`` objects (the wrapper, six per-adapter containers,
two factor ``nn.Linear`` and a dropout module). ``nn.Module.__init__`` fills sixteen attributes one by one
through ``object.__setattr__`` (~10 us per module), and ``ModuleDict.__setitem__`` runs ``add_module``'s checks
for every insertion: for a model with hundreds of adapted layers that is most of an injection's Python time.

Here each class gets a *prototype*: the ``__dict__`` that its real constructor leaves (built once, with the
installed torch, so whatever attributes that version sets are there). A new object is that dictionary, copied,
with every container (hook dicts, ``_parameters``, ``_modules``, ``ParameterDict._keys``...) replaced by a fresh
empty one of the same type. The result is indistinguishable from a constructed module: same class, same
attributes, so ``state_dict``, ``named_modules``, ``print``, ``to``, ``deepcopy``, pickling and ``torch.compile``
see an ordinary module.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import nn
from torch.nn.modules import module as _module_impl

from peftkit.errors import UnsupportedError

M = TypeVar("M", bound=nn.Module)

#: Constructor arguments for prototypes of classes that need some (their values are overwritten by the caller).
_PROTOTYPE_ARGS: dict[type, tuple[Any, ...]] = {nn.Linear: (1, 1)}
#: Containers that a prototype may hold non-empty (they are emptied in every copy and filled by the caller).
_FILLED_BY_CALLER = frozenset({"_parameters", "_buffers", "_modules"})

_PROTOTYPES: dict[type, tuple[dict[str, Any], tuple[tuple[str, type], ...]]] = {}
#: ``(container class, key)`` pairs that passed ``add_module``'s name checks once (the checks depend on both only).
_CHECKED_KEYS: set[tuple[type, str]] = set()


def _prototype(cls: type[nn.Module]) -> tuple[dict[str, Any], tuple[tuple[str, type], ...]]:
    entry = _PROTOTYPES.get(cls)
    if entry is None:
        with torch.random.fork_rng(devices=[]):  # a constructor may draw (nn.Linear): leave the user's stream alone
            state = dict(cls(*_PROTOTYPE_ARGS.get(cls, ())).__dict__)
        containers = tuple((k, type(v)) for k, v in state.items() if isinstance(v, (dict, set, list)))
        kept = [k for k, _ in containers if state[k] and k not in _FILLED_BY_CALLER]
        if kept:  # a constructor that stores data we cannot rebuild empty: not a prototype class
            raise UnsupportedError(
                f"{cls.__name__} keeps {kept} filled after construction; build it with its constructor."
            )
        entry = _PROTOTYPES[cls] = (state, containers)
    return entry


def new_module(cls: type[M], **attributes: Any) -> M:
    """A ``cls`` object as its constructor leaves it, then ``attributes`` set as plain instance attributes.

    Args:
        cls: An ``nn.Module`` class whose constructor stores only plain values and (empty) containers.
        attributes: Values for the constructor's own attributes (``in_features``, ``p``...), written to
            ``__dict__`` directly: never parameters, buffers or submodules (put those in ``_parameters`` /
            ``_modules``).

    Raises:
        UnsupportedError: ``cls``'s constructor keeps data in a container (it cannot be copied empty).
    """
    state, containers = _prototype(cls)
    module = cls.__new__(cls)
    fields = module.__dict__
    fields.update(state)
    for key, kind in containers:
        fields[key] = kind()
    if attributes:
        fields.update(attributes)
    return module


def init_module_state(module: nn.Module) -> None:
    """In a subclass's ``__init__``, what ``nn.Module.__init__`` (``super().__init__()``) would set, faster."""
    state, containers = _prototype(nn.Module)
    fields = module.__dict__
    fields.update(state)
    for key, kind in containers:
        fields[key] = kind()


def set_child(container: nn.Module, key: str, child: nn.Module) -> None:
    """``container[key] = child`` for a ``ModuleDict``, with ``add_module``'s name checks run once per container
    class and key (every adapted layer inserts the same adapter name) and the global registration hooks kept."""
    if _module_impl._global_module_registration_hooks or (type(container), key) not in _CHECKED_KEYS:
        container.add_module(key, child)  # the checks (and hooks): raises on an invalid name
        _CHECKED_KEYS.add((type(container), key))
        return
    container._modules[key] = child


class _CollectorPause:
    """How many :func:`gc_paused` blocks are running, and whether the collector was on when the first began."""

    lock = threading.Lock()
    depth = 0
    was_enabled = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """Hold off Python's cyclic garbage collector while a block builds many objects (an injection: ~10 modules
    per adapted layer).

    The collector starts a pass after every ~700 net allocations of tracked objects, and its older generations
    walk every object that torch and transformers keep alive (~500k): about 8% of an injection's time. Reference
    counting still frees everything meanwhile; only the search for cycles waits until the block ends. Nested and
    concurrent blocks share one pause: the collector is switched back on when the last one ends (also on an
    error), and only if it was on when the first began.
    """
    with _CollectorPause.lock:
        if _CollectorPause.depth == 0:
            _CollectorPause.was_enabled = gc.isenabled()
            gc.disable()
        _CollectorPause.depth += 1
    try:
        yield
    finally:
        with _CollectorPause.lock:
            _CollectorPause.depth -= 1
            if _CollectorPause.depth == 0 and _CollectorPause.was_enabled:
                gc.enable()
