"""The opt-in: :func:`patch_transformers` makes transformers use peftkit for adapters, process-wide.

After ``peftkit.patch_transformers()``:

* every ``PreTrainedModel`` has peftkit's adapter methods (``add_adapter``, ``load_adapter``,
  ``set_adapter``, ``enable_adapters``, ``disable_adapters``, ``active_adapters``, ``delete_adapter``,
  ``get_adapter_state_dict``, ``enable_peft_hotswap``): the first call swaps that instance's class for
  its adapter subclass (see :mod:`peftkit.integrations.transformers`), which also brings the adapter-only
  ``save_pretrained`` and ``push_to_hub``; the reference ``peft`` is never imported;
* ``from_pretrained`` of every model class and Auto class, and ``pipeline(model=...)``, detect an adapter
  directory or hub repo (``adapter_config.json``), load the base it names (or the full model beside it)
  and attach the adapter, whether or not ``peft`` is installed;
* ``Trainer`` saves adapter-only checkpoints for peftkit models, resumes from them and loads the best one
  (:mod:`peftkit.integrations.trainer`), treats a peftkit ``PeftModel`` as a PEFT model (label names and
  dataset columns from the base model's ``forward``, quantized bases accepted).

:func:`unpatch_transformers` undoes all of it (models already given the methods keep them).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from peftkit.integrations import trainer as trainer_support
from peftkit.integrations.transformers import AdapterModelMixin, enable_adapter_methods

#: The adapter methods that transformers' ``PeftAdapterMixin`` defines and peftkit replaces.
ADAPTER_METHODS = (
    "add_adapter",
    "load_adapter",
    "set_adapter",
    "enable_adapters",
    "disable_adapters",
    "active_adapters",
    "delete_adapter",
    "get_adapter_state_dict",
    "enable_peft_hotswap",
)
#: Modules whose ``is_peft_available`` gates adapter detection in ``from_pretrained`` / Auto classes / pipeline.
_DETECTION_SITES = ("transformers.integrations.peft", "transformers.models.auto.auto_factory", "transformers.pipelines")

_originals: list[tuple[Any, str, Any]] = []
#: Which parts are applied: "methods" (model adapter methods), "detection" (adapter directories in
#: ``from_pretrained``), "trainer" (checkpoints). ``peftkit.install_as_peft`` applies "methods" and "trainer".
_applied: set[str] = set()


def _set(owner: Any, name: str, value: Any) -> None:
    _originals.append((owner, name, getattr(owner, name)))
    setattr(owner, name, value)


def _entry(name: str) -> Callable[..., Any]:
    """A ``PreTrainedModel`` method that gives the instance the adapter methods, then runs peftkit's ``name``."""

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        enable_adapter_methods(self)
        return getattr(self, name)(*args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = getattr(AdapterModelMixin, name).__doc__
    return method


def _detection_enabled() -> bool:
    """Stands in for transformers' ``is_peft_available`` where it only gates reading ``adapter_config.json``."""
    return True


def _detection_disabled() -> bool:
    return False


@contextmanager
def adapter_detection(enabled: bool) -> Iterator[None]:
    """Within the block, transformers' ``from_pretrained`` detects adapter directories iff ``enabled``."""
    replacement = _detection_enabled if enabled else _detection_disabled
    modules: list[Any] = [importlib.import_module(site) for site in _DETECTION_SITES]
    saved = [module.is_peft_available for module in modules]
    for module in modules:
        module.is_peft_available = replacement
    try:
        yield
    finally:
        for module, original in zip(modules, saved):
            module.is_peft_available = original


def _trainer_save(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def _save(self: Any, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if trainer_support._handles(self, saving=True):
            return trainer_support.trainer_save(self, output_dir, state_dict)
        return original(self, output_dir, state_dict)

    return _save


def _trainer_save_model(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def save_model(self: Any, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if trainer_support.saves_sharded_fsdp(self):  # on every rank: the adapter's shards are gathered
            trainer_support.trainer_save(self, output_dir)
        return original(self, output_dir, _internal_call)

    return save_model


def _trainer_load_from_checkpoint(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def _load_from_checkpoint(self: Any, resume_from_checkpoint: str, model: Any = None) -> None:
        if trainer_support._handles(self, model):
            return trainer_support.trainer_load_from_checkpoint(self, resume_from_checkpoint, model)
        return original(self, resume_from_checkpoint, model)

    return _load_from_checkpoint


def _trainer_load_best_model(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def _load_best_model(self: Any) -> None:
        if trainer_support._handles(self):
            return trainer_support.trainer_load_best_model(self)
        return original(self)

    return _load_best_model


def _update_fsdp_plugin(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def update(model: Any, accelerator: Any) -> Any:
        if trainer_support.is_adapter_model(model):
            from peftkit.integrations.fsdp import update_fsdp_plugin

            return update_fsdp_plugin(model, accelerator)
        return original(model, accelerator)

    return update


def _is_peft_model(original: Callable[[Any], bool]) -> Callable[[Any], bool]:
    @functools.wraps(original)
    def check(model: Any) -> bool:
        from peftkit.peft_model import PeftModel

        return isinstance(model, PeftModel) or original(model)

    return check


def patch_adapter_methods() -> None:
    """The model-method part of :func:`patch_transformers`: ``PeftAdapterMixin``'s methods become peftkit's."""
    if "methods" in _applied:
        return
    from transformers.integrations.peft import PeftAdapterMixin

    for name in ADAPTER_METHODS:
        _set(PeftAdapterMixin, name, _entry(name))
    _applied.add("methods")


def patch_trainer() -> None:
    """The ``Trainer`` part of :func:`patch_transformers`: adapter-only checkpoints, resume and load-best for
    peftkit models, and peftkit's ``PeftModel`` counted as a PEFT model."""
    if "trainer" in _applied:
        return
    import transformers.trainer
    import transformers.trainer_utils

    for module in (transformers.trainer, transformers.trainer_utils):
        _set(module, "_is_peft_model", _is_peft_model(module._is_peft_model))
    if hasattr(transformers.trainer, "update_fsdp_plugin_peft"):  # imports peft; peftkit models get their own
        _set(
            transformers.trainer,
            "update_fsdp_plugin_peft",
            _update_fsdp_plugin(transformers.trainer.update_fsdp_plugin_peft),
        )
    trainer_cls = transformers.trainer.Trainer
    for name, wrap in (
        ("_save", _trainer_save),
        ("save_model", _trainer_save_model),
        ("_load_from_checkpoint", _trainer_load_from_checkpoint),
        ("_load_best_model", _trainer_load_best_model),
    ):
        _set(trainer_cls, name, wrap(getattr(trainer_cls, name)))
    _applied.add("trainer")


def patch_transformers() -> None:
    """Opt in: transformers' models, Auto classes, pipeline and Trainer use peftkit for adapters.

    Idempotent; see the module docstring for what changes. Undo with :func:`unpatch_transformers`.
    """
    patch_adapter_methods()
    if "detection" not in _applied:
        for site in _DETECTION_SITES:
            _set(importlib.import_module(site), "is_peft_available", _detection_enabled)
        _applied.add("detection")
    patch_trainer()


def unpatch_transformers() -> None:
    """Undo :func:`patch_transformers` (models that already have the adapter methods keep them)."""
    while _originals:
        owner, name, original = _originals.pop()
        setattr(owner, name, original)
    _applied.clear()


def is_patched() -> bool:
    """Whether :func:`patch_transformers` (or a part of it) is in effect."""
    return bool(_applied)
