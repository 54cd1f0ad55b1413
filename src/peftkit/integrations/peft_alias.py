"""peftkit answers to the name ``peft``, so transformers, accelerate and TRL treat its models as PEFT models.

Those libraries recognise PEFT through the package itself: ``is_peft_available()`` (``importlib.util.find_spec``
plus the installed distribution's metadata), ``from peft import PeftModel, PeftConfig, get_peft_model`` and
``isinstance`` checks against those classes (accelerate's ``is_peft_model``, the ``Trainer``'s
``_is_peft_model``, TRL's ``peft_config`` and reference-model logic), ``from peft.tuners.tuners_utils import
BaseTunerLayer``, ``peft.__version__``. Rather than patching each check, peftkit makes them true at the source:

* a finder at the front of ``sys.meta_path`` serves ``import peft`` as a module that forwards every attribute to
  ``peftkit`` (its ``__version__`` is the PEFT release whose API and format peftkit implements, 0.21.2), and
  ``import peft.<path>`` as the peftkit module at the same relative path (``peft.tuners.lora`` is
  ``peftkit.tuners.lora``: one module object, one set of classes);
* the same finder reports a ``peft`` distribution of that version to ``importlib.metadata``.

With the reference ``peft`` not installed this happens on ``import peftkit``, no call needed: import peftkit
before transformers' ``Trainer``, accelerate or TRL are imported (they bind ``peft``'s names when they load).
With the reference installed, nothing changes unless :func:`install_as_peft` is called (before anything imports
``peft``): the process then uses peftkit under both names and the reference stays unused, as ``pymysql`` does
with ``install_as_MySQLdb()``. Without that call the reference keeps working for its own models.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import sys
import types
from collections.abc import Iterator, Sequence
from typing import Any

from peftkit.config import PEFT_FORMAT_VERSION
from peftkit.errors import UsageError

ALIAS = "peft"
TARGET = "peftkit"

__all__ = ["alias_installed", "install_as_peft", "reference_peft_installed"]


def _target_name(name: str) -> str:
    return TARGET + name[len(ALIAS) :]


def _alias_package() -> types.ModuleType:
    """The ``peft`` module: peftkit's public names, PEFT's ``__version__``, every other attribute forwarded."""
    package = importlib.import_module(TARGET)
    module = types.ModuleType(ALIAS, package.__doc__)
    public = {name: getattr(package, name) for name in package.__all__}
    vars(module).update(public, __all__=list(package.__all__), __version__=PEFT_FORMAT_VERSION, __path__=[])
    vars(module)["__peftkit_alias__"] = True
    module.__getattr__ = lambda name: getattr(package, name)  # type: ignore[method-assign]  # PEP 562 module hook
    return module


class _AliasLoader(importlib.abc.Loader):
    """Hands out the peftkit module for a ``peft`` name (no second copy of any module is executed)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.original_spec: importlib.machinery.ModuleSpec | None = None
        self.shared = False

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        if self.target == TARGET:
            return _alias_package()
        module = importlib.import_module(self.target)
        self.original_spec, self.shared = module.__spec__, True
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        if self.shared:  # the import system set the alias spec on the shared module: give it its own back
            module.__spec__ = self.original_spec


class _PeftDistribution(importlib.metadata.Distribution):
    """What ``importlib.metadata`` reports for ``peft``: name and version (the PEFT API peftkit implements)."""

    def read_text(self, filename: str) -> str | None:
        if filename == "METADATA":
            return f"Metadata-Version: 2.1\nName: {ALIAS}\nVersion: {PEFT_FORMAT_VERSION}\nSummary: peftkit\n"
        return None

    def locate_file(self, path: str | os.PathLike[str]) -> Any:
        return os.path.join(os.path.dirname(importlib.import_module(TARGET).__file__ or ""), os.fspath(path))


def _after_adapter_mixin() -> None:
    from peftkit.integrations.patch import patch_adapter_methods

    patch_adapter_methods()


def _after_trainer() -> None:
    from peftkit.integrations.patch import patch_trainer

    patch_trainer()


#: transformers modules whose peftkit routing is installed once they are imported: the model adapter methods
#: (transformers' own need PEFT's internals) and the Trainer's checkpoints (also for in-place adapters).
AFTER_IMPORT = {"transformers.integrations.peft": _after_adapter_mixin, "transformers.trainer": _after_trainer}
#: Availability checks that libraries cache (``functools.lru_cache``): forgotten when peftkit starts answering.
_CACHED_CHECKS = (
    ("transformers.utils.import_utils", "is_peft_available"),
    ("transformers.utils.import_utils", "is_peft_greater_or_equal"),
    ("accelerate.utils.imports", "is_peft_available"),
)
#: Names that transformers modules bind from ``peft`` only when it was available at their import.
_BOUND_NAMES = {"transformers.trainer": ("PeftModel",), "transformers.trainer_utils": ("PeftModel", "PeftMixedModel")}


class _ThenLoader(importlib.abc.Loader):
    """Runs a module's own loader, then a hook (the module is complete by then)."""

    def __init__(self, loader: Any, hook: Any) -> None:
        self.loader, self.hook = loader, hook

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self.loader.exec_module(module)
        self.hook()

    def __getattr__(self, name: str) -> Any:  # get_source, get_code... of the wrapped loader
        return getattr(self.loader, name)


class PeftAliasFinder(importlib.abc.MetaPathFinder):
    """Serves ``peft`` and ``peft.*`` from peftkit, ``peft``'s distribution metadata, and runs
    :data:`AFTER_IMPORT` hooks."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname in AFTER_IMPORT:
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
            if spec is not None and spec.loader is not None:
                spec.loader = _ThenLoader(spec.loader, AFTER_IMPORT[fullname])
            return spec
        if fullname != ALIAS and not fullname.startswith(ALIAS + "."):
            return None
        real = _target_name(fullname)
        if fullname != ALIAS and real not in sys.modules and importlib.util.find_spec(real) is None:
            return None  # a path peftkit does not have: ``import peft.x`` fails as it would without peft
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(real), is_package=True)

    def find_distributions(self, context: Any = None) -> Iterator[importlib.metadata.Distribution]:
        name = getattr(context, "name", None)
        if name is not None and name.lower().replace("_", "-") == ALIAS:
            yield _PeftDistribution()


def alias_installed() -> bool:
    """Whether ``peft`` currently resolves to peftkit in this process."""
    return any(isinstance(finder, PeftAliasFinder) for finder in sys.meta_path)


def reference_peft_installed() -> bool:
    """Whether the reference ``peft`` package could be imported (peftkit's own alias aside)."""
    if alias_installed():
        return False
    try:
        return importlib.util.find_spec(ALIAS) is not None
    except (ImportError, ValueError):  # blocked by a finder, or ``sys.modules["peft"] = None``
        return False


def install_as_peft() -> None:
    """Make ``import peft`` give peftkit for the rest of the process (idempotent).

    ``import peftkit`` already does this when the reference ``peft`` is not installed; call it yourself only
    to use peftkit in place of an installed reference, before anything imports ``peft``.

    Raises:
        UsageError: the reference ``peft`` is already imported (its classes are bound in other modules, so
            switching now would leave two libraries answering to one name).
    """
    if alias_installed():
        return
    loaded = sys.modules.get(ALIAS)
    if loaded is not None and not vars(loaded).get("__peftkit_alias__", False):
        raise UsageError(
            "The reference peft package is already imported; call peftkit.install_as_peft() before anything "
            "imports peft (e.g. right after `import peftkit`, before importing trl or the transformers Trainer)."
        )
    sys.meta_path.insert(0, PeftAliasFinder())
    package = importlib.import_module(TARGET)
    for module_name, names in _BOUND_NAMES.items():  # imported before peft existed: give them the names now
        if module_name in sys.modules:
            for name in names:
                vars(sys.modules[module_name]).setdefault(name, getattr(package, name))
    for module_name, function in _CACHED_CHECKS:  # asked before peft existed: ask again
        clear = getattr(getattr(sys.modules.get(module_name), function, None), "cache_clear", None)
        if clear is not None:
            clear()
    for module_name, hook in AFTER_IMPORT.items():
        if module_name in sys.modules:
            hook()


def install_if_reference_absent() -> None:
    """``import peftkit``'s step: answer to ``peft`` when the reference is not installed (and not blocked on
    purpose with ``sys.modules["peft"] = None``)."""
    if ALIAS in sys.modules or reference_peft_installed():
        return
    install_as_peft()
