"""Adapter state, decided in one place: which adapters are active, which train, whether adapters are off.

A model's adapter state is an :class:`AdapterStatus` (active names, trainable names, disabled flag). Adapter
layers and modules_to_save wrappers only *record* it; every change goes through a pure function of this
module (``status_after_*``), and :func:`apply_status` writes a status into modules and sets ``requires_grad``
by the single rule :func:`trains`. ``PeftModel``, the prompt models, the transformers model methods and the
Trainer checkpoint code all go through here, so "disable then enable", "add a frozen adapter", "delete the
active adapter" give the same trainable set whatever the shell.

Rules (PEFT 0.21's where it is consistent):

* a tensor of adapter ``a`` trains iff ``a`` is in the trainable set and adapters are not disabled; original
  modules (``base_layer``, ``original_module``) are never touched here;
* ``set_adapter(names)`` makes ``names`` active and trainable, except adapters loaded for inference
  (``frozen``) and all of them under ``inference_mode=True``;
* adding an adapter leaves the active and trainable sets as they were (the newcomer is frozen), unless it is
  loaded trainable (``load_adapter(..., is_trainable=True)``);
* disabling never changes the trainable set, so enabling restores exactly what trained before;
* deleting an active adapter keeps the other active ones; when none is left, the first remaining adapter in
  sorted order becomes active, and trains iff the deleted one trained and it is not frozen.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from torch import nn

from peftkit.errors import AdapterNameError


@dataclass(frozen=True)
class AdapterStatus:
    """The adapter state of a whole model.

    Attributes:
        active: The active adapters, in order (what a forward applies).
        trainable: The adapters whose tensors train while adapters are enabled.
        disabled: ``True`` while every adapter is switched off (the model computes like its base).
    """

    active: tuple[str, ...] = ()
    trainable: frozenset[str] = frozenset()
    disabled: bool = False


class StateRecorder(Protocol):
    """What :func:`apply_status` needs from a layer or wrapper."""

    def holds(self, adapter: str) -> bool: ...

    def record_status(self, status: AdapterStatus) -> None: ...

    def recorded_status(self) -> AdapterStatus: ...

    def all_adapter_parameters(self) -> Iterator[tuple[str, nn.Parameter]]: ...


def trains(adapter: str, status: AdapterStatus) -> bool:
    """The one rule for ``requires_grad`` of an adapter's tensors (LoRA factors, IA3 vectors, modules_to_save
    copies, prompt encoders): ``adapter`` is trainable and adapters are enabled."""
    return adapter in status.trainable and not status.disabled


def apply_status(modules: Iterable[StateRecorder], status: AdapterStatus) -> None:
    """Record ``status`` in every module and set each adapter tensor's ``requires_grad`` by :func:`trains`.

    Raises:
        AdapterNameError: a modules_to_save wrapper would have two active adapters (checked before anything
            changes).
    """
    modules = list(modules)
    for module in modules:
        check = getattr(type(module), "check_status", None)  # on the class: no ``nn.Module.__getattr__`` miss
        if check is not None:
            check(module, status)
    for module in modules:
        module.record_status(status)
        frozen: set[int] = getattr(module, "frozen_adapter_tensors", set)()  # never trained (MiCA's B)
        for name, param in module.all_adapter_parameters():
            wanted = trains(name, status) and id(param) not in frozen
            if param.requires_grad != wanted:
                param.requires_grad_(wanted)


def read_status(modules: Iterable[StateRecorder]) -> AdapterStatus | None:
    """The status recorded by the first module (all agree when set through :func:`apply_status`), or ``None``."""
    for module in modules:
        return module.recorded_status()
    return None


def first_status(adapter: str, trainable: bool) -> AdapterStatus:
    """A model's status after its first adapter: active, trainable unless created or loaded for inference."""
    return AdapterStatus((adapter,), frozenset({adapter}) if trainable else frozenset(), False)


def status_after_set(
    status: AdapterStatus, names: Sequence[str], inference_mode: bool = False, frozen: Collection[str] = ()
) -> AdapterStatus:
    """``set_adapter(names)``: they become the active adapters; they train unless ``inference_mode`` or frozen
    (loaded with ``is_trainable=False``); every other adapter stops training."""
    trainable = frozenset() if inference_mode else frozenset(n for n in names if n not in frozen)
    return replace(status, active=tuple(names), trainable=trainable)


def status_after_add(status: AdapterStatus, adapter: str, trainable: bool) -> AdapterStatus:
    """A new, inactive adapter: the active set is unchanged; it trains only if loaded trainable."""
    return replace(status, trainable=status.trainable | {adapter}) if trainable else status


def status_after_requires_grad(status: AdapterStatus, names: Iterable[str], requires_grad: bool) -> AdapterStatus:
    """PEFT's ``set_requires_grad(names, requires_grad)``: add ``names`` to (or remove them from) the trainable set."""
    names = frozenset(names)
    trainable = status.trainable | names if requires_grad else status.trainable - names
    return replace(status, trainable=trainable)


def status_after_delete(
    status: AdapterStatus, deleted: str, remaining: Iterable[str], frozen: Collection[str] = ()
) -> AdapterStatus:
    """What stays active and trains once ``deleted`` is gone (``remaining``: the adapters left)."""
    active = tuple(n for n in status.active if n != deleted)
    trainable = status.trainable - {deleted}
    if not active and deleted in status.active:
        left = sorted(remaining)
        active = tuple(left[:1])
        if active and deleted in status.trainable and active[0] not in frozen:
            trainable |= {active[0]}
    return replace(status, active=active, trainable=trainable)


def wrapper_active(status: AdapterStatus, held: Collection[str]) -> list[str]:
    """The active adapters a modules_to_save wrapper records: only those it holds (at most one).

    Raises:
        AdapterNameError: more than one active adapter has a copy in this wrapper.
    """
    names = [n for n in status.active if n in held]
    if len(names) > 1:
        raise AdapterNameError(
            f"Only one adapter with modules_to_save can be active at a time, got {names}; activate one of them."
        )
    return names
