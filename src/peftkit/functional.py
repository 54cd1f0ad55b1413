"""The functional core: everything peftkit does to a plain ``nn.Module`` (the *inner* model), under the thin shells
(``PeftModel``, the transformers mixin, the CLI), whose business key prefixes such as ``base_model.model.`` are."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

# The state functions live in peftkit.adapter_state; shells reach them here as well (explicit re-exports).
from peftkit.adapter_state import adapters_disabled as adapters_disabled
from peftkit.adapter_state import apply_model_status
from peftkit.adapter_state import delete_adapter as delete_adapter
from peftkit.adapter_state import enable_adapters as enable_adapters
from peftkit.adapter_state import model_status as model_status
from peftkit.adapter_state import set_active_adapters as set_active_adapters
from peftkit.adapter_state import set_requires_grad as set_requires_grad
from peftkit.adapter_state import set_trainable_adapters as set_trainable_adapters
from peftkit.config import PeftConfig
from peftkit.errors import AdapterNameError, TargetingError, UnsupportedError, UsageError
from peftkit.layers.base import BASE_ADAPTER, CALL_STATE, AdapterLayer, BatchRouting
from peftkit.layers.compiled_call import prepared_call
from peftkit.layers.fresh import gc_paused
from peftkit.layers.model_merge import merge_layers, prepare_merge, unmerge_layers
from peftkit.layers.modules_to_save import ModulesToSaveWrapper
from peftkit.layers.parameters import inject_config_parameters
from peftkit.layers.routing import check_adapter_name
from peftkit.layers.shared import HOLDER_NAME, drop_shared_tensors, forget_shared_tensors, holder_for
from peftkit.layers.state import AdapterStatus, apply_status, read_status, status_after_add, status_after_set
from peftkit.layers.walk import AdapterModule, all_parameters, is_nested, walk_model
from peftkit.layers.walk import adapter_names_in as adapter_names_in
from peftkit.layers.walk import iter_adapter_modules as iter_adapter_modules
from peftkit.layers.wrap import remove_layer, replace_module
from peftkit.locking import exclusive, lock_of
from peftkit.methods.spec import MethodSpec, method_of
from peftkit.quant.merge import prepare_base, release_base
from peftkit.targeting import ALL_LINEAR, all_linear_names, check_modules_to_save, config_targets, name_matches


@dataclass
class Injection:
    """What one :func:`inject_adapter` call changed, so that a failed load can undo it exactly.

    Attributes:
        adapter_name: The adapter that was added.
        created: ``(name, original_module)`` for every module replaced by a new wrapper.
        updated: Existing adapter modules that received the adapter in place.
        grad_state: ``requires_grad`` of every parameter before the injection.
        status: The model's adapter status before the injection (``None``: it had no adapter).
        target_names: Full names of the adapted layers (for ``all-linear`` expansion).
        parameter_names: ``module.parameter`` names adapted through ``target_parameters``.
        config: The config as injected (after the method's ``prepare_config``), to be stored by the caller.
    """

    adapter_name: str
    created: list[tuple[str, nn.Module]] = field(default_factory=list)
    updated: list[AdapterModule] = field(default_factory=list)
    grad_state: dict[nn.Parameter, bool] = field(default_factory=dict)
    status: AdapterStatus | None = None
    target_names: list[str] = field(default_factory=list)
    parameter_names: list[str] = field(default_factory=list)
    config: PeftConfig | None = None
    shared: bool = False

    def undo(self, model: nn.Module) -> None:
        """Restore ``model`` to what it was before the injection."""
        if self.shared:
            drop_shared_tensors(model, self.adapter_name)
        for module in self.updated:
            module.delete_adapter(self.adapter_name)
        for name, original in reversed(self.created):
            remove_layer(model, name, original)
        if self.status is not None:
            apply_model_status(model, self.status)
        for param, flag in self.grad_state.items():
            param.requires_grad_(flag)


def _model_type(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None)


def resolve_targets(
    model: nn.Module, config: PeftConfig, spec: MethodSpec, candidates: dict[str, nn.Module] | None = None
) -> set[str] | str:
    """The config's target_modules, the architecture default, or the ``all-linear`` expansion (of ``candidates``)."""
    targets = getattr(config, "target_modules", None)
    if targets is None and getattr(config, "target_parameters", None):
        return set()  # parameters only: no architecture default (PEFT's rule)
    if targets is None:
        defaults = spec.default_targets(_model_type(model)) if spec.default_targets else None
        if defaults is None:
            names = ", ".join(sorted({n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if n}))
            raise TargetingError(
                f"No default target_modules for model type {_model_type(model)!r}; set target_modules in the "
                f"config (e.g. from these module names: {names})."
            )
        return set(defaults)
    if targets == ALL_LINEAR:
        # adapter layers count as their base layer, and their insides (base_layer, lora_A, ...) not at all
        found = candidates.items() if candidates is not None else _candidates(model, spec)
        view = ((n, m.get_base_layer() if isinstance(m, AdapterLayer) else m) for n, m in found)
        return all_linear_names(model, spec.linear_types, view)
    return targets


#: Set (``True``) in a model's ``__dict__`` to let adapter layers of different methods stack (a mixed model).
MIXED_METHODS = "_peftkit_mixed_methods"


def _candidates(
    model: nn.Module, spec: MethodSpec, walked: Sequence[tuple[str, nn.Module]] | None = None
) -> Iterator[tuple[str, nn.Module]]:
    """Modules that may be targeted (of ``walked``: ``walk_model(model)`` if the caller has it): plain modules, this
    method's layers (not their insides), in a mixed-method model other methods' outermost layers too."""
    mixed = model.__dict__.get(MIXED_METHODS, False)
    for name, module in walk_model(model) if walked is None else walked:
        if not isinstance(module, AdapterLayer):
            yield name, module
        elif not is_nested(name, module) and (mixed or spec.owns(module)):
            yield name, module


@exclusive
@gc_paused()
def inject_adapter(
    model: nn.Module,
    config: PeftConfig,
    adapter_name: str,
    *,
    init_weights: bool = True,
    active: Sequence[str] | None = None,
    trainable: bool = False,
) -> Injection:
    """Add adapter ``adapter_name`` described by ``config`` to ``model`` in place.

    Args:
        init_weights: ``False`` allocates the adapter without initialising it (a load follows).
        active: The adapters active afterwards (default: just this one). Naming the newcomer re-marks what trains
            (:func:`mark_trainable`); else the newcomer is frozen unless ``trainable`` (``is_trainable=True``).

    Returns:
        The :class:`Injection` record (call ``undo`` to revert).

    Raises:
        AdapterNameError: the name is invalid or taken. TargetingError: nothing to adapt.
    """
    spec = method_of(config)
    if spec.is_prompt_learning:
        raise UnsupportedError(
            f"{config.peft_type} adds virtual tokens, not adapter layers, so it cannot be injected into a model; "
            "wrap the model with get_peft_model(model, config) instead."
        )
    if spec.prepare_config is not None:
        config = spec.prepare_config(config, model)
    walked = list(walk_model(model))  # one walk: the name check, the status, the targets and their parents
    present = [module for _, module in walked if isinstance(module, (AdapterLayer, ModulesToSaveWrapper))]
    check_adapter_name(adapter_name, [adapter_name] if any(m.holds(adapter_name) for m in present) else ())
    grads = {p: p.requires_grad for p in all_parameters(model)}
    record = Injection(adapter_name, grad_state=grads, status=read_status(present))
    candidates = dict(_candidates(model, spec, walked))  # by name
    for module in candidates.values():  # every quantized layer, adapted or not, feeds the adapters' gradients
        prepare_base(module)
    names = _module_targets(model, config, spec, candidates)
    try:
        for name in names:
            _inject_one(model, name, config, spec, adapter_name, init_weights, record, candidates)
        record.parameter_names = inject_config_parameters(
            model, config, spec, adapter_name, init_weights, record.created, record.updated
        )
        _add_model_tensors(model, spec, config, adapter_name, names, record)
        _wrap_modules_to_save(model, getattr(config, "modules_to_save", None), adapter_name, record)
        if spec.after_inject is not None:
            spec.after_inject(config, model, adapter_name)
    except BaseException:
        record.undo(model)
        raise
    record.target_names = names
    record.config = config
    _settle_status(model, spec, config, record, list(active) if active is not None else [adapter_name], trainable)
    return record


def _module_targets(model: nn.Module, config: PeftConfig, spec: MethodSpec, candidates: dict) -> list[str]:
    """The modules to adapt, an adapter layer (this method's, or another's in a mixed model) matched by the module it
    wraps; none when the config adapts parameters only (``target_parameters``)."""
    targets = resolve_targets(model, config, spec, candidates)
    if not targets and getattr(config, "target_parameters", None):
        return []
    view = {n: m.get_base_layer() if isinstance(m, AdapterLayer) else m for n, m in candidates.items()}
    return config_targets(view, targets, config, spec.adaptable_for(config), spec.pattern_fields)


def _settle_status(
    model: nn.Module, spec: MethodSpec, config: PeftConfig, record: Injection, active: list[str], trainable: bool
) -> None:
    """After an injection: the first adapter, or one made active, re-marks what trains; otherwise the new layers
    join the model's status and the newcomer trains only if loaded trainable."""
    if record.status is None or record.adapter_name in active:
        mark_trainable(model, spec, config, active, record.status)
        return
    status = status_after_add(record.status, record.adapter_name, trainable)
    if status != record.status:
        apply_model_status(model, status)
    else:  # the model's status is unchanged: only the modules holding the newcomer need it (and its tensors' flags)
        apply_status((m for _, m in iter_adapter_modules(model) if m.holds(record.adapter_name)), status)


def _inject_one(
    model: nn.Module,
    name: str,
    config: PeftConfig,
    spec: MethodSpec,
    adapter: str,
    init: bool,
    record: Injection,
    modules: dict[str, nn.Module] | None = None,
) -> None:
    """Adapt module ``name``; ``modules`` (name -> module, from the targeting walk) saves walking the path."""
    modules = modules or {}
    module = modules[name] if name in modules else model.get_submodule(name)
    base = module.get_base_layer() if isinstance(module, AdapterLayer) else module
    facts = spec.layer_facts(config, name, base)  # type: ignore[misc]  # layer methods always have layer_facts (prompt methods never get here)
    if spec.owns(module):
        module.update_layer(adapter, facts, init)  # type: ignore[operator]  # an AdapterLayer (a layer_table value)
        record.updated.append(module)  # type: ignore[arg-type]  # an AdapterLayer (a layer_table value)
        return
    # a plain module, or another method's layer in a mixed-method model: the new layer wraps it
    layer_class: Any = spec.layer_class_for(base, config)  # the layer contract: (base_layer, fan_in_fan_out=...)
    layer = layer_class(module, fan_in_fan_out=getattr(facts, "fan_in_fan_out", False))
    layer.update_layer(adapter, facts, init)
    parent_name = name.rpartition(".")[0]
    parent = modules.get(parent_name) if parent_name in modules else None
    record.created.append((name, replace_module(model, name, layer, parent=parent)))


def _add_model_tensors(
    model: nn.Module, spec: MethodSpec, config: PeftConfig, adapter: str, names: Sequence[str], record: Injection
) -> None:
    """Create the tensors ``adapter`` holds once per model (``spec.model_tensors``) from its targets' base
    modules, and hand their holder to each of its layers."""
    if spec.model_tensors is None:
        return
    layers = {name: model.get_submodule(name) for name in names}
    targets = {n: m.get_base_layer() if isinstance(m, AdapterLayer) else m for n, m in layers.items()}
    holder = holder_for(model)
    record.shared = True
    held = {name: holder.get(name) for name in holder.adapters}
    holder.add(adapter, spec.model_tensors.create(config, targets, held))
    for layer in layers.values():
        if isinstance(layer, AdapterLayer):
            layer.add_module(HOLDER_NAME, holder)  # so that ``model.to()`` moves the tensors
            layer.use_model_tensors(adapter, holder)


def _wrap_modules_to_save(model: nn.Module, wanted: Sequence[str] | None, adapter: str, record: Injection) -> None:
    if not wanted:
        return
    modules = list(model.named_modules())
    check_modules_to_save(wanted, [name for name, _ in modules])
    for name, module in modules:
        if not name or not name_matches(name, wanted) or ".modules_to_save." in name or ".original_module" in name:
            continue
        if isinstance(module, ModulesToSaveWrapper):
            module.update(adapter)
            record.updated.append(module)
        elif not isinstance(module, AdapterLayer) and not any(name.startswith(n + ".") for n, _ in record.created):
            record.created.append((name, replace_module(model, name, ModulesToSaveWrapper(module, adapter))))


@exclusive
def add_modules_to_save(model: nn.Module, names: Sequence[str] | None, adapter_name: str) -> Injection:
    """Give ``adapter_name`` a trainable copy of each module named in ``names`` (no adapter layers): what prompt
    methods need for e.g. a classifier head. Returns the undoable :class:`Injection` record."""
    record = Injection(adapter_name, grad_state={p: p.requires_grad for p in model.parameters()})
    try:
        _wrap_modules_to_save(model, names, adapter_name, record)
    except BaseException:
        record.undo(model)
        raise
    return record


@exclusive
def mark_trainable(
    model: nn.Module,
    spec: MethodSpec,
    config: PeftConfig,
    active: Sequence[str],
    status: AdapterStatus | None = None,
) -> None:
    """Freeze the base, then let the active adapters (and the biases ``config.bias`` asks for) train.
    ``status``: the model's adapter status before (its disabled flag is kept)."""
    for param in all_parameters(model, skip_adapter_tensors=True):  # apply_model_status sets the adapters'
        if param.requires_grad:
            param.requires_grad_(False)
    apply_model_status(model, status_after_set(status or AdapterStatus(), active, config.inference_mode))
    if config.inference_mode:
        return
    bias = spec.bias_rule(config)
    if bias == "all":
        for name, param in model.named_parameters():
            if name.endswith("bias") and ".original_module." not in name:
                param.requires_grad_(True)
    elif bias == "adapter_layers":
        for _, module in iter_adapter_modules(model):
            base_bias = getattr(module.get_base_layer(), "bias", None) if isinstance(module, AdapterLayer) else None
            if base_bias is not None:  # an adapted nn.Embedding has no bias: nothing to train there (as in PEFT)
                base_bias.requires_grad_(True)


@torch.compiler.disable
def start_mixed_batch(model: nn.Module, adapter_names: Sequence[str], expand: bool = False) -> BatchRouting | None:
    """Route this thread's forwards of ``model`` by ``adapter_names`` (``expand``: also multiples of their number, as
    ``generate`` expands); returns the previous routing. Untraced: a new mix becomes index tensors, no recompile."""
    present = adapter_names_in(model)
    unknown = sorted(set(adapter_names) - present - {BASE_ADAPTER})
    if unknown:
        raise AdapterNameError(
            f"adapter_names contains unknown adapters {unknown}; present: {sorted(present)} (or {BASE_ADAPTER!r})."
        )
    previous = CALL_STATE.routing
    CALL_STATE.routing = BatchRouting.from_names(list(adapter_names), sorted(present), expand=expand)
    return previous


@torch.compiler.disable
def end_mixed_batch(previous: BatchRouting | None) -> None:
    """Undo :func:`start_mixed_batch`."""
    CALL_STATE.routing = previous


@contextmanager
def mixed_batch(model: nn.Module, adapter_names: Sequence[str], expand: bool = False) -> Iterator[None]:
    """Route sample ``i`` of this thread's forwards in the block to ``adapter_names[i]``, holding the lock shared."""
    with lock_of(model).shared():
        previous = start_mixed_batch(model, adapter_names, expand)
        try:
            yield
        finally:
            end_mixed_batch(previous)


def _layers(model: nn.Module) -> list[tuple[str, AdapterLayer]]:
    return [(n, m) for n, m in iter_adapter_modules(model) if isinstance(m, AdapterLayer)]


@contextmanager
def inference_call(
    model: nn.Module, adapter_names: Sequence[str] | None, expand: bool = False, training: bool = False
) -> Iterator[None]:
    """One inference call: ``model``'s lock held shared, its layers prepared when compiled (``compiled_call``) and,
    with ``adapter_names``, routed as a mixed batch (``UsageError`` while ``training``: those are for inference)."""
    if adapter_names is None:
        with lock_of(model).shared(), prepared_call(model, training):  # compiled: refresh what the graphs read
            yield
        return
    if training:
        raise UsageError("adapter_names (mixed batches) is for inference; call model.eval() first.")
    with mixed_batch(model, adapter_names, expand=expand):
        yield


@exclusive
def merge_adapters(model: nn.Module, adapter_names: Sequence[str] | None = None, safe_merge: bool = False) -> None:
    """Fold ``adapter_names`` (default: each layer's active ones) into the base weights (see ``layers.model_merge``)."""
    merge_layers(model, _layers(model), adapter_names, safe_merge)


@exclusive
def unmerge_adapters(model: nn.Module) -> None:
    """Undo every merge (warns and changes nothing when no adapter is merged)."""
    unmerge_layers(_layers(model))


@exclusive
def unload(
    model: nn.Module, merge: bool = False, safe_merge: bool = False, adapter_names: Sequence[str] | None = None
) -> nn.Module:
    """Replace every adapter layer by its base layer (merging first if ``merge``); modules_to_save wrappers
    become their active copy. Returns ``model``."""
    if merge:
        layers = prepare_merge(model, _layers(model), adapter_names)
        for _, layer in reversed(layers):  # innermost first (see peftkit.layers.model_merge)
            layer.merge(safe_merge=safe_merge, adapter_names=adapter_names)
    for name, module in list(iter_adapter_modules(model)):
        if isinstance(module, AdapterLayer):
            if not is_nested(name, module):  # a nested layer goes with the layer holding it
                remove_layer(model, name, module.get_base_layer())
        else:
            replace_module(model, name, module.active_module())
    forget_shared_tensors(model)
    for _, plain in walk_model(model):
        release_base(plain)
    return model
