"""The import layer of ``scripts/peft_suite.py``: ``import peft...`` resolves to peftkit (pytest plugin).

Loaded with ``-p peft_suite_shim`` in the peftkit run only. A meta-path finder answers every ``peft`` and
``peft.<path>`` import with a proxy module that reads its attributes from ``peftkit.<path>``, the real peftkit
module under the same relative path. Nothing is implemented here: a path or a name that peftkit lacks becomes
a placeholder that raises :class:`MissingInPeftkit` naming it as soon as a test uses it (checks an instance
against it, reads an attribute, uses what calling it returned), so that only the tests that need it fail
and the report can count them. Every missing path and name seen is written to ``PEFT_SUITE_MISSING`` (a JSON
file) at the end.
"""

from __future__ import annotations

import atexit
import importlib
import importlib.abc
import importlib.util
import json
import os
import sys
import types
from collections import Counter
from importlib.machinery import ModuleSpec
from typing import Any

MISSING: Counter[str] = Counter()


class MissingInPeftkit(ImportError):
    """A test used a PEFT import path or name that has no peftkit equivalent."""


class _MissingValue:
    """What calling a placeholder gives (PEFT's test modules build some configs when imported): it fails when
    used, so that only the tests that use it fail."""

    def __init__(self, path: str) -> None:
        self._peft_path = path

    def __repr__(self) -> str:
        return f"<missing {self._peft_path}>"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        raise MissingInPeftkit(f"peftkit has no equivalent of {self._peft_path} (reading .{name})")

    def _fail(self, *args: Any, **kwargs: Any) -> Any:
        raise MissingInPeftkit(f"peftkit has no equivalent of {self._peft_path}")

    __call__ = __iter__ = __getitem__ = __len__ = __contains__ = _fail


class _MissingMeta(type):
    def _fail(cls, *args: Any, **kwargs: Any) -> Any:
        raise MissingInPeftkit(f"peftkit has no equivalent of {cls._peft_path}")

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return _MissingValue(f"{cls._peft_path}(...)")

    def __instancecheck__(cls, obj: Any) -> bool:
        return False  # nothing peftkit makes is an instance of a class it lacks (PEFT's tests ask per method)

    def __subclasscheck__(cls, sub: Any) -> bool:
        return False

    __getitem__ = _fail
    __iter__ = _fail
    __contains__ = _fail
    __len__ = _fail

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("_"):  # introspection (inspect, dataclasses, pytest) probes private names
            raise AttributeError(name)
        raise MissingInPeftkit(f"peftkit has no equivalent of {cls._peft_path} (reading .{name})")


def missing(path: str) -> type:
    """A placeholder for the PEFT name ``path`` that fails on use (recorded in :data:`MISSING`)."""
    MISSING[path] += 1
    return _MissingMeta(path.rsplit(".", 1)[-1], (), {"_peft_path": path})


class _Proxy(types.ModuleType):
    """``peft.<path>``: attributes come from ``peftkit.<path>``, or are placeholders when it lacks them."""

    def __getattr__(self, name: str) -> Any:
        target = self.__dict__.get("_peftkit_module")
        if target is not None and hasattr(target, name):
            return getattr(target, name)
        if name.startswith("__"):
            raise AttributeError(name)
        sub = f"{self.__name__}.{name}"
        if _exists(f"peftkit{sub[4:]}"):
            return importlib.import_module(sub)
        return missing(sub)

    def __setattr__(self, name: str, value: Any) -> None:
        # ``monkeypatch.setattr(peft.config, "__version__", ...)`` must reach the module the code reads from
        target = self.__dict__.get("_peftkit_module")
        if target is not None and name not in _OWN_ATTRIBUTES and hasattr(target, name):
            setattr(target, name, value)
        else:
            super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        target = self.__dict__.get("_peftkit_module")
        if target is not None and name not in self.__dict__ and hasattr(target, name):
            delattr(target, name)
        else:
            super().__delattr__(name)


#: The proxy's own module attributes (set by the import machinery), never forwarded to the peftkit module.
_OWN_ATTRIBUTES = {"__path__", "__file__", "__doc__", "__spec__", "__loader__", "__name__", "__package__"}


def _exists(module: str) -> bool:
    if module in sys.modules:  # also modules built at run time, whose __spec__ may be None
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


class _Loader(importlib.abc.Loader):
    def create_module(self, spec: ModuleSpec) -> types.ModuleType:
        return _Proxy(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        real = "peftkit" + module.__name__[4:]
        try:
            target: types.ModuleType | None = importlib.import_module(real)
        except ModuleNotFoundError as error:
            if error.name is None or not real.startswith(error.name):
                raise
            MISSING[module.__name__ + " (module)"] += 1
            target = None
        module.__dict__["_peftkit_module"] = target
        module.__path__ = []  # type: ignore[attr-defined]
        if target is not None:
            module.__file__ = getattr(target, "__file__", None)
            module.__doc__ = target.__doc__


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        if fullname != "peft" and not fullname.startswith("peft."):
            return None
        return ModuleSpec(fullname, _Loader(), is_package=True)


def install() -> None:
    """Put the finder first and forget any ``peft`` module imported before it."""
    for name in [n for n in sys.modules if n == "peft" or n.startswith("peft.")]:
        del sys.modules[name]
    sys.meta_path.insert(0, _Finder())
    target = os.environ.get("PEFT_SUITE_MISSING")
    if target:
        atexit.register(_write_missing, target)


def _write_missing(target: str) -> None:
    with open(target, "w", encoding="utf-8") as handle:
        json.dump(dict(MISSING.most_common()), handle, indent=1)


def pytest_configure(config: Any) -> None:
    """pytest hook: install the import layer before any test module is collected."""
    install()
