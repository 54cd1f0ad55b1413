"""Results derived from a model's module tree, kept across operations and used only after verifying the tree.

A walk of a model with adapters (:func:`~peftkit.layers.walk.walk_model`) and the key map of an adapter's
checkpoint cost Python per module and per tensor on every load, hot-swap, status change and delete. Torch's
registration hooks cannot say when to drop such a result (a direct ``module._modules[key] = child`` or
``module._parameters[name] = tensor`` bypasses them), so nothing here relies on a signal: a cached result keeps
a :class:`TreeRecord` of every dictionary it was derived from (each module's ``_modules``, and for tensors the
owner's ``_parameters`` / ``_buffers``) with the objects they held, and is used only while every one of those
dictionaries still holds exactly those objects (compared by identity, in a tight loop of dictionary reads).
Anything else -- a module replaced, added or removed anywhere in the walked tree, a parameter replaced, an
adapter added or deleted in a layer -- fails the check, and the result is rebuilt.

Tensors are kept as the live ``Parameter`` / buffer objects (not detached views): ``model.to(dtype)`` swaps a
parameter's ``.data`` in place, and a kept view would then point at the old storage.

The cache is keyed weakly by the root module; the cached values never hold the root itself (a cycle through
it, which would keep it alive, is not cached). A record holds what it recorded: a module replaced or removed, or a
deleted adapter's tensors, stays alive until the next walk or check of that model drops the record (a delete drops
the results derived for the model at once: :func:`forget_derived`).
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Callable, Hashable, Iterable
from itertools import chain, repeat
from typing import Any

from torch import nn

from peftkit.layers.base import AdapterLayer
from peftkit.layers.modules_to_save import ModulesToSaveWrapper

AdapterModuleTypes = (AdapterLayer, ModulesToSaveWrapper)
_ABSENT = object()
Snapshot = tuple[tuple[str, Any], ...]


def _snap(items: dict[str, Any]) -> Snapshot:
    return tuple(items.items())


def _same(live: dict[str, Any], snap: Snapshot) -> bool:
    """Whether ``live`` holds exactly the keys and (by identity) the objects of ``snap``."""
    if len(live) != len(snap):
        return False
    for key, value in snap:
        if live.get(key, _ABSENT) is not value:
            return False
    return True


def _by_identity(group: _Dicts | _Edges) -> bool:
    """Whether every value ``group`` holds compares by identity only (``None``, and modules: ``nn.Module`` defines no
    ``__eq__``; not tensors, whose ``==`` compares values), so that its list of values can be checked with ``==``;
    decided on the first check (the values never change), with the ids the other check needs."""
    if group.by_identity is None:
        group.by_identity = all(t is type(None) or t.__eq__ is object.__eq__ for t in set(map(type, group.held)))
        group.ids = [] if group.by_identity else list(map(id, group.held))
    return group.by_identity


class _Dicts:
    """One kind of module dictionary (``_modules``, ``_parameters`` or ``_buffers``) of some modules, with what
    each held: its length, its keys and the ids of its values in order. The values are held (so that no id is
    reused by a new object while the record lives: a replaced child stays alive until the record is dropped, at
    the next check). Checked with C-level ``map`` / list comparisons only."""

    __slots__ = ("by_identity", "get", "held", "ids", "keys", "lengths", "owners")

    def __init__(self, attr: str) -> None:
        self.get = operator.attrgetter(attr)
        self.by_identity: bool | None = None
        self.owners: list[nn.Module] = []
        self.lengths: list[int] = []
        self.keys: list[str] = []
        self.ids: list[int] = []
        self.held: list[Any] = []

    def add(self, module: nn.Module) -> None:
        live = self.get(module)
        self.by_identity = None
        self.owners.append(module)
        self.lengths.append(len(live))
        self.keys.extend(live)
        self.held.extend(live.values())

    def intact(self) -> bool:
        live = list(map(self.get, self.owners))
        if list(map(len, live)) != self.lengths or list(chain.from_iterable(live)) != self.keys:
            return False
        values = chain.from_iterable(map(dict.values, live))
        if _by_identity(self):  # list equality tries identity first, and these objects compare by nothing else
            return list(values) == self.held
        return list(map(id, values)) == self.ids


class _Edges:
    """Single entries ``getattr(owner, attr)[key]`` of one kind of module dictionary, with the object each held
    (``None``: absent); the other entries of those dictionaries are not looked at (nor kept alive)."""

    __slots__ = ("by_identity", "get", "held", "ids", "keys", "owners")

    def __init__(self, attr: str) -> None:
        self.get = operator.attrgetter(attr)
        self.by_identity: bool | None = None
        self.owners: list[nn.Module] = []
        self.keys: list[str] = []
        self.held: list[Any] = []
        self.ids: list[int] = []

    def add(self, owner: nn.Module, key: str) -> None:
        self.by_identity = None
        self.owners.append(owner)
        self.keys.append(key)
        self.held.append(self.get(owner).get(key))

    def intact(self) -> bool:
        values = map(dict.get, map(self.get, self.owners), self.keys)
        if _by_identity(self):
            return list(values) == self.held
        return list(map(id, values)) == self.ids


class TreeRecord:
    """The module dictionaries (or single entries of them) a cached result was derived from, with the objects
    they held then."""

    __slots__ = ("_seen", "_seen_tensors", "buffers", "children", "edges", "parameters", "plain")

    def __init__(self) -> None:
        self.children, self.parameters, self.buffers = _Dicts("_modules"), _Dicts("_parameters"), _Dicts("_buffers")
        self.edges = {attr: _Edges(attr) for attr in ("_modules", "_parameters", "_buffers")}
        self.plain: list[nn.Module] = []
        self._seen: set[int] = set()
        self._seen_tensors: set[int] = set()

    def assume(self, modules: Iterable[nn.Module]) -> None:
        """Leave the children of ``modules`` to another record, or to single entries (verified with this one)."""
        self._seen.update(id(module) for module in modules)

    def add_children(self, module: nn.Module) -> None:
        """Depend on ``module._modules`` (its child modules, by key)."""
        if id(module) not in self._seen:
            self._seen.add(id(module))
            self.children.add(module)

    def add_entry(self, owner: nn.Module, attr: str, key: str) -> None:
        """Depend on ``getattr(owner, attr).get(key)`` only (``attr``: ``"_modules"``, ``"_parameters"`` or
        ``"_buffers"``)."""
        self.edges[attr].add(owner, key)

    def add_tensors(self, module: nn.Module, *, plain: bool = False) -> None:
        """Depend on ``module._parameters``, ``module._buffers`` and ``module._modules``; with ``plain``, also on
        ``module`` having no state-dict hooks (which would choose the keys of its tensors)."""
        self.add_children(module)
        if id(module) not in self._seen_tensors:
            self._seen_tensors.add(id(module))
            self.parameters.add(module)
            self.buffers.add(module)
            if plain:
                self.plain.append(module)

    def reaches(self, obj: object) -> bool:
        """Whether ``obj`` is a recorded module or one of their children (a tree that reaches its root again)."""
        return any(map(operator.is_, repeat(obj), chain(self.children.owners, self.children.held)))

    def intact(self) -> bool:
        """Whether every recorded dictionary still holds exactly the recorded objects."""
        return (
            self.children.intact()
            and self.parameters.intact()
            and self.buffers.intact()
            and all(edges.intact() for edges in self.edges.values())
            and not any(map(len, map(_HOOKS, self.plain)))
            and not any(map(len, map(_PRE_HOOKS, self.plain)))
        )


_HOOKS, _PRE_HOOKS = operator.attrgetter("_state_dict_hooks"), operator.attrgetter("_state_dict_pre_hooks")


class _Entry:
    """A root's cached walk (without the root itself) and the results derived from it."""

    __slots__ = ("derived", "record", "root_children", "walk")

    def __init__(self, root_children: Snapshot, record: TreeRecord, walk: list[tuple[str, nn.Module]]) -> None:
        self.root_children, self.record, self.walk = root_children, record, walk
        self.derived: dict[Hashable, tuple[TreeRecord, Any]] = {}

    def intact(self, root: nn.Module) -> bool:
        return _same(root._modules, self.root_children) and self.record.intact()


_CACHE: weakref.WeakKeyDictionary[nn.Module, _Entry] = weakref.WeakKeyDictionary()


def cached_walk(
    root: nn.Module, walk: Callable[[nn.Module], list[tuple[str, nn.Module]]]
) -> list[tuple[str, nn.Module]]:
    """``walk(root)`` (a list of ``(name, module)``, ``root`` first as ``""``), reused while the tree is unchanged.

    ``walk`` must derive its list from the ``_modules`` of the listed modules only, plus, for an adapter layer or
    a modules_to_save wrapper, from its base layer's ``_modules`` (all recorded here).
    """
    entry = _CACHE.get(root)
    if entry is not None and entry.intact(root):
        return [("", root), *entry.walk]
    listed = walk(root)
    record = TreeRecord()
    children = record.children  # the walk lists each module once: no need for add_children's bookkeeping
    for _, module in listed[1:]:
        children.add(module)
        base = module._modules.get("base_layer") if isinstance(module, AdapterModuleTypes) else None
        if base is not None:
            children.add(base)
    if not record.reaches(root):  # a tree that reaches its root again is not cached (it would keep the root alive)
        _CACHE[root] = _Entry(_snap(root._modules), record, listed[1:])
    else:
        _CACHE.pop(root, None)
    return listed


def recall(root: nn.Module, key: Hashable) -> Any:
    """The result stored under ``key`` for ``root`` by :func:`remember`, or ``None`` when it is absent or anything
    it was derived from (the walked tree, the dictionaries in its own record) changed (it is then dropped)."""
    entry = _CACHE.get(root)
    found = None if entry is None else entry.derived.get(key)
    if found is None:
        return None
    if not (entry.intact(root) and found[0].intact()):  # type: ignore[union-attr]
        entry.derived.pop(key, None)  # type: ignore[union-attr]
        return None
    return found[1]


def remember(root: nn.Module, key: Hashable, record: TreeRecord, value: Any) -> None:
    """Keep ``value`` for ``root`` under ``key`` while ``record`` and the walk of ``root`` stay intact (call right
    after :func:`cached_walk`; dropped with the walk when the tree changes)."""
    entry = _CACHE.get(root)
    if entry is not None and not record.reaches(root):
        entry.derived[key] = (record, value)


def forget_derived(root: nn.Module) -> None:
    """Drop the results derived for ``root`` (an adapter is being deleted: its tensors must not outlive it in a
    kept key map)."""
    entry = _CACHE.get(root)
    if entry is not None:
        entry.derived.clear()
