"""The template adapter layer: one control flow for every layer method.

A wrapped layer keeps the original module as ``base_layer`` and holds each adapter's parameters in
dictionaries keyed by adapter name. :meth:`AdapterLayer.forward` decides, for every call, between

* adapters disabled (or none active)  -> ``base_layer(x)`` (unmerging first if needed),
* merged                              -> ``base_layer(x)`` (the adapters live in the base weight),
* a mixed batch (:data:`CALL_STATE` holds a routing) -> :meth:`AdapterLayer.mixed_forward`, one adapter per sample,
* otherwise                           -> :meth:`AdapterLayer.adapted_forward` with the active adapters.

The layer contract: a method's layer class subclasses :class:`AdapterLayer` and supplies

* :attr:`adapter_layer_names` (per-adapter ``ModuleDict`` / ``ParameterDict`` of trainable tensors, whose
  attribute names reach the state dict, e.g. ``lora_A``) and :attr:`other_param_names` (per-adapter settings);
* ``__init__(base_layer, fan_in_fan_out=False)`` and :meth:`update_layer` (required): add one adapter from the
  per-layer facts the method's spec computes (``MethodSpec.layer_facts``);
* the math: :meth:`adapt_input` (e.g. IA3 scales the input) and/or :meth:`adapt_output` (e.g. LoRA adds
  ``s * B A x``); :meth:`merge_one` / :meth:`unmerge_one` to fold an adapter into the base weight;
* optional fast paths (:meth:`single_adapter_forward`, :meth:`compiled_forward`, :meth:`mixed_forward`), and
  :meth:`use_model_tensors` when the method holds tensors once per model (``MethodSpec.model_tensors``).

Everything else (disabled / merged / active adapters, mixed batches, deleting) is the template's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any, ClassVar

import torch
from torch import nn

from peftkit.errors import AdapterNameError, UsageError
from peftkit.layers.call_args import input_from_kwargs
from peftkit.layers.fresh import init_module_state
from peftkit.layers.placement import onloaded

# Re-exported: the routing lives in its own module, the layers and wrappers read it from here.
from peftkit.layers.routing import BASE_ADAPTER as BASE_ADAPTER
from peftkit.layers.routing import CALL_STATE as CALL_STATE
from peftkit.layers.routing import BatchRouting as BatchRouting
from peftkit.layers.routing import call_routed
from peftkit.layers.state import AdapterStatus, apply_status, status_after_delete, status_after_set
from peftkit.layers.watch import Watch
from peftkit.quant.merge import BaseSnapshot, restore_base, snapshot_base


def _as_parameters(item: torch.Tensor) -> list[nn.Parameter]:
    """A container entry as its trainable tensors: a ``ParameterDict`` entry, none for a ``BufferDict`` buffer."""
    return [item] if isinstance(item, nn.Parameter) else []


class AdapterState:
    """What a layer or wrapper records of its model's adapter state (see :mod:`peftkit.layers.state`).

    Records only: the decisions (what trains, what stays active after a delete) are the functions of
    :mod:`peftkit.layers.state`, written here by :meth:`record_status`.

    Attributes:
        _active_adapter: Names of the active adapters, in order (what this module's forward applies).
        _disable_adapters: ``True`` while every adapter is switched off.
        _trainable_adapters: Names of the adapters whose tensors train while adapters are enabled.
    """

    _active_adapter: list[str]
    _disable_adapters: bool

    @property
    def disable_adapters(self) -> bool:
        return self._disable_adapters

    def adapter_names(self) -> set[str]:
        """Names of the adapters this module holds."""
        raise NotImplementedError

    def holds(self, adapter: str) -> bool:
        """Whether this module holds ``adapter``."""
        return adapter in self.adapter_names()

    def all_adapter_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``(adapter name, parameter)`` for every adapter tensor of this module."""
        raise NotImplementedError

    def record_status(self, status: AdapterStatus) -> None:
        """Record the model's adapter state (no ``requires_grad`` here: :func:`~peftkit.layers.state.apply_status`)."""
        # ``object.__setattr__``: a plain list (or a subclass's property), never a parameter or submodule, so
        # ``nn.Module.__setattr__``'s registration checks would only cost time (this runs for every layer).
        object.__setattr__(self, "_active_adapter", list(status.active))
        self.__dict__["_trainable_adapters"] = status.trainable
        self.__dict__["_disable_adapters"] = status.disabled

    def recorded_status(self) -> AdapterStatus:
        """The model's adapter state as this module recorded it."""
        trainable = self.__dict__.get("_trainable_adapters")
        if trainable is None:  # never given a status (a layer built by hand): what its tensors say
            trainable = frozenset(name for name, param in self.all_adapter_parameters() if param.requires_grad)
        return AdapterStatus(tuple(self._active_adapter), trainable, self._disable_adapters)

    def set_adapter(self, adapter_names: str | Sequence[str], trainable: bool = True) -> None:
        """Make ``adapter_names`` active in this module; they train iff ``trainable``, all others are frozen."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        apply_status([self], status_after_set(self.recorded_status(), names, inference_mode=not trainable))

    def enable_adapters(self, enabled: bool) -> None:
        """Turn all adapters of this module on or off; off freezes them, on restores what trained before."""
        apply_status([self], replace(self.recorded_status(), disabled=not enabled))

    @property
    def active_adapters(self) -> list[str]:
        return list(self._active_adapter)

    @property
    def active_adapter(self) -> str | list[str]:
        return self._active_adapter[0] if len(self._active_adapter) == 1 else list(self._active_adapter)


class AdapterLayer(AdapterState, nn.Module):
    """Base of every adapter-carrying layer; owns the control flow, not the math.

    Attributes:
        base_layer: The original module (its weights stay frozen).
        merged_adapters: Adapters currently merged into the base weight, in merge order.
    """

    #: Attributes whose values are ``nn.ModuleDict`` / ``nn.ParameterDict`` of trainable adapter weights.
    adapter_layer_names: ClassVar[tuple[str, ...]] = ()
    #: Attributes whose values are plain ``dict``s of per-adapter settings (ranks, scalings, ...).
    other_param_names: ClassVar[tuple[str, ...]] = ()
    #: The method in the layer's printed name, as PEFT prints it (``lora.`` gives ``lora.Linear(...)``).
    repr_prefix: ClassVar[str] = ""

    #: ``True`` for a layer that another layer placed inside its base module (listed by that layer's
    #: :meth:`inner_layers`, driven by it, never targeted or unloaded on its own).
    is_inner_layer: ClassVar[bool] = False

    base_layer: nn.Module
    merged_adapters: list[str]
    #: A quantized base's packed weight from before the first merge (unmerge puts it back exactly).
    _base_snapshot: BaseSnapshot | None

    def __init__(self, base_layer: nn.Module) -> None:
        init_module_state(self)  # ``super().__init__()``, minus its per-attribute cost (see layers/fresh.py)
        self._modules["base_layer"] = base_layer
        # Plain attributes in one go: ``nn.Module.__setattr__`` is slow, and this runs for every adapted layer.
        self.__dict__.update(_disable_adapters=False, merged_adapters=[], _base_snapshot=None)
        object.__setattr__(self, "_active_adapter", [])  # a plain list (or a subclass's property)

    # -- method hooks -----------------------------------------------------------------------------
    def update_layer(self, adapter: str, facts: Any, init_weights: bool = True) -> None:
        """Add adapter ``adapter`` (required hook).

        Args:
            facts: What the method's ``MethodSpec.layer_facts`` computed for this layer (rank, scaling...).
            init_weights: ``False`` allocates the tensors without initialising them (a load follows).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement update_layer")

    def use_model_tensors(self, adapter: str, holder: nn.Module) -> None:
        """Receive the holder of the tensors ``adapter`` keeps once per model (methods with
        ``MethodSpec.model_tensors``). The core has registered it as this layer's child ``peft_shared_tensors``;
        read ``holder.get(adapter)`` at forward time, never keep its tensors, which ``model.to()`` replaces."""

    def adapt_input(self, x: torch.Tensor, adapter: str) -> torch.Tensor:
        """Transform the input before the base layer (identity unless the method scales inputs)."""
        return x

    def adapt_output(self, result: torch.Tensor, x: torch.Tensor, adapter: str) -> torch.Tensor:
        """Combine the base output with adapter ``adapter`` applied to the original input ``x``."""
        return result

    def merge_one(self, adapter: str, safe_merge: bool) -> None:
        """Fold ``adapter`` into the base weight in place."""
        raise NotImplementedError(f"{type(self).__name__} cannot merge adapters")

    def unmerge_one(self, adapter: str) -> None:
        """Undo :meth:`merge_one` for ``adapter``."""
        raise NotImplementedError(f"{type(self).__name__} cannot unmerge adapters")

    def inner_layers(self) -> list[tuple[str, AdapterLayer]]:
        """Adapter layers this layer placed inside its base module, with their names relative to this layer
        (LoRA on ``nn.MultiheadAttention`` wraps its ``out_proj``); the model walk lists them after this layer."""
        return []

    def release_inner(self) -> None:
        """Put the original modules of :meth:`inner_layers` back into the base module (before this layer is
        replaced by its base: unload, deleting its last adapter, undoing an injection)."""

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        if x is None or "adapter_names" in kwargs:
            return self._keyword_forward(x, *args, **kwargs)
        if self._disable_adapters:
            if self.merged_adapters:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        routing = CALL_STATE.routing
        if routing is not None:
            if self.merged_adapters:
                raise UsageError("A mixed batch (adapter_names=...) cannot run while adapters are merged; unmerge.")
            return self.mixed_forward(x, routing.for_batch(x.shape[0]), *args, **kwargs)
        if self.merged_adapters:
            return self.base_layer(x, *args, **kwargs)
        if torch.compiler.is_compiling():
            traced = self.compiled_forward(x, *args, **kwargs)
            if traced is not None:
                return traced
        active = self._active_adapter
        if len(active) == 1 and not args and not kwargs:
            fast = self.single_adapter_forward(x, active[0])
            if fast is not None:
                return fast
        active = [name for name in active if self.holds(name)]
        if not active:
            return self.base_layer(x, *args, **kwargs)
        return self.adapted_forward(x, active, *args, **kwargs)

    def _keyword_forward(self, x: torch.Tensor | None, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The input by keyword (``linear(input=t)``), and PEFT's mixed batch of one layer
        (``layer(x, adapter_names=[...])``, see :func:`~peftkit.layers.routing.call_routed`)."""
        if x is None:
            x, kwargs = input_from_kwargs(self.get_base_layer(), kwargs)
        names = kwargs.pop("adapter_names", None)
        if names is None:
            return self.forward(x, *args, **kwargs)
        return call_routed(self, names, lambda: self.forward(x, *args, **kwargs))

    def prepare_compiled(self) -> Watch | None:
        """Optional: refresh, outside the graph, what :meth:`compiled_forward` reads while ``CALL_STATE.prepared``
        (run at a compiled call's entry); returns what it read (skipped while unchanged) or None (run every call)."""

    def compiled_forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor | None:
        """Optional path while ``torch.compile`` traces: one that reads no adapter names (so switching adapters
        does not recompile), or ``None`` for the general path."""
        return None

    def single_adapter_forward(self, x: torch.Tensor, adapter: str) -> torch.Tensor | None:
        """Optional fast path for the commonest call (one active adapter, no extra arguments): the output, or
        ``None`` to take the general path. It must check that this layer holds ``adapter``."""
        return None

    def adapted_forward(self, x: torch.Tensor, adapters: Sequence[str], *args: Any, **kwargs: Any) -> torch.Tensor:
        """Forward with every adapter in ``adapters`` applied (their effects compose)."""
        x_in = x
        for name in adapters:
            x_in = self.adapt_input(x_in, name)
        result = self.base_layer(x_in, *args, **kwargs)
        for name in adapters:
            result = self.adapt_output(result, x, name)
        return result

    def mixed_forward(self, x: torch.Tensor, routing: BatchRouting, *args: Any, **kwargs: Any) -> torch.Tensor:
        """One adapter per sample (generic path: one sub-batch per distinct adapter).

        Methods with a batched formulation (LoRA) override this with a path whose cost does not grow
        like a loop over adapters.
        """
        routing = routing.for_batch(x.shape[0])
        present = self.adapter_names()
        result: torch.Tensor | None = None
        for name, rows in routing.groups(x.device):
            sub_x = x.index_select(0, rows)
            if name in present:
                sub = self.adapted_forward(sub_x, [name], *args, **kwargs)
            else:
                sub = self.base_layer(sub_x, *args, **kwargs)
            if result is None:
                result = sub.new_empty((x.shape[0], *sub.shape[1:]))
            result.index_copy_(0, rows, sub)
        assert result is not None
        return result

    # -- state ------------------------------------------------------------------------------------
    def holds(self, adapter: str) -> bool:
        """Whether this layer has weights for ``adapter`` (what ``adapter in self.adapter_names()`` says,
        without building the set: this runs in every forward)."""
        modules = self._modules
        for attr in self.adapter_layer_names:
            container: Any = modules[attr] if attr in modules else getattr(self, attr)
            if adapter in container:
                return True
        return False

    def adapter_names(self) -> set[str]:
        """Names of the adapters this layer holds."""
        names: set[str] = set()
        modules = self._modules
        for attr in self.adapter_layer_names:
            container: Any = modules[attr] if attr in modules else getattr(self, attr)
            # a ModuleDict's keys are its children's names: read them without the Python-level ``keys()``
            names.update(container._modules if isinstance(container, nn.ModuleDict) else container.keys())
        return names

    def _all_available_adapter_names(self) -> list[str]:
        """PEFT's name (on ``BaseTunerLayer``) for :meth:`adapter_names`, sorted."""
        return sorted(self.adapter_names())

    @property
    def merged(self) -> bool:
        return bool(self.merged_adapters)

    @property
    def weight(self) -> torch.Tensor:
        return self.get_base_layer().weight

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.get_base_layer(), "bias", None)  # nn.Embedding has none

    def get_base_layer(self) -> Any:
        """The innermost original module (layers may be nested).

        Typed ``Any``: it is whichever module type the method wraps (``nn.Linear``, ``Conv1D``, a quantized
        linear...), whose ``weight`` / ``bias`` / shape attributes ``nn.Module`` cannot describe statically.
        """
        base = self._modules.get("base_layer") or self.base_layer  # no ``nn.Module.__getattr__`` in the usual case
        while isinstance(base, AdapterLayer):
            base = base._modules.get("base_layer") or base.base_layer
        return base

    def adapter_parameters(self, adapter: str) -> Iterable[nn.Parameter]:
        """The trainable tensors of ``adapter`` in this layer."""
        for attr in self.adapter_layer_names:
            container = getattr(self, attr)
            if adapter in container:
                item = container[adapter]
                yield from (item.parameters() if isinstance(item, nn.Module) else _as_parameters(item))

    def all_adapter_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``(adapter name, parameter)`` for every adapter tensor of this layer, in one pass over the
        containers (cheaper than :meth:`adapter_parameters` per name: this runs for every layer on every
        ``set_adapter``)."""
        modules = self._modules
        for attr in self.adapter_layer_names:
            container: Any = modules[attr] if attr in modules else getattr(self, attr)
            entries = container._modules if isinstance(container, nn.ModuleDict) else container  # mostly empty
            for name, item in entries.items() if entries else ():
                if not isinstance(item, nn.Module):
                    params: Iterable[nn.Parameter] = _as_parameters(item)
                else:  # a leaf module (the usual factor ``nn.Linear``): its own dictionary, no generators
                    params = item.parameters() if item._modules else item._parameters.values()  # type: ignore[assignment]
                yield from ((name, param) for param in params if param is not None)

    def delete_adapter(self, adapter: str, status: AdapterStatus | None = None) -> None:
        """Remove ``adapter``'s weights and settings, then record ``status`` (default: what
        :func:`~peftkit.layers.state.status_after_delete` decides from this layer alone)."""
        if adapter in self.merged_adapters:
            raise AdapterNameError(f"Adapter {adapter!r} is merged into the base weights; unmerge it before deleting.")
        before = self.recorded_status()
        for attr in self.adapter_layer_names + self.other_param_names:
            container = getattr(self, attr)
            if adapter in container:
                del container[adapter]
        apply_status([self], status or status_after_delete(before, adapter, self.adapter_names()))

    # -- merging ----------------------------------------------------------------------------------
    def merge(self, safe_merge: bool = False, adapter_names: Sequence[str] | None = None) -> None:
        """Fold ``adapter_names`` (default: the active adapters) into the base weight."""
        names = list(adapter_names) if adapter_names is not None else self.active_adapters
        todo = [name for name in names if name not in self.merged_adapters and name in self.adapter_names()]
        if not todo:
            return
        for name in todo:  # every refusal before anything is written
            self.check_mergeable(name)
        with onloaded(self.get_base_layer()):  # an offloaded base: merge into its stored weights
            if not self.merged_adapters:  # a quantized base: keep the packed weight that unmerge puts back
                self._base_snapshot = snapshot_base(self.get_base_layer())
            for name in todo:
                self.merge_one(name, safe_merge)
                self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Undo every merge, last merged first (a quantized base gets its original packed weight back)."""
        snapshot, self._base_snapshot = self._base_snapshot, None
        if not self.merged_adapters:
            return
        with onloaded(self.get_base_layer()):
            if snapshot is not None:
                restore_base(self.get_base_layer(), snapshot)
                self.merged_adapters.clear()
                return
            while self.merged_adapters:
                self.unmerge_one(self.merged_adapters.pop())

    def check_mergeable(self, adapter: str) -> None:
        """Raise a ``MergeError`` if ``adapter`` cannot merge here (checked on every layer before a merge writes)."""

    def supports_lora_conversion(self, adapter_name: str = "default") -> bool:
        """Whether :func:`~peftkit.convert_to_lora` can approximate ``adapter_name`` here (PEFT's name)."""
        return False

    def _get_name(self) -> str:
        """PEFT's ``<method>.<layer>``, with the base's class for a layer class that serves several (``Conv`` on
        an ``nn.Conv2d`` prints ``lora.Conv2d``, ``LoHaLayer`` on a Linear ``loha.Linear``)."""
        name, base = type(self).__name__, type(self.get_base_layer()).__name__
        generic = name.endswith("Layer") or (base.startswith(name) and base[len(name) :].endswith("d"))
        return self.repr_prefix + (base if generic else name)

    def extra_repr(self) -> str:
        return f"adapters={sorted(self.adapter_names())}, active={self._active_adapter}"
