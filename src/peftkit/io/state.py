"""Building an adapter's state dict from a model, and loading one into it with every check first.

Keys here are relative to the inner model (no ``base_model.model.`` prefix) and carry no adapter name.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Iterable, Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from peftkit.config import PeftConfig
from peftkit.errors import CheckpointError
from peftkit.functional import iter_adapter_modules
from peftkit.io.embeddings import default_base_path, plain_embedding_modules, targets_embedding, vocab_resized
from peftkit.io.keys import TUNER_PREFIX, match_keys, remove_adapter_name, rename_suffix, strip_wrapper_segments
from peftkit.io.sharded import select_state
from peftkit.layers.base import AdapterLayer
from peftkit.layers.modules_to_save import ModulesToSaveWrapper
from peftkit.layers.placement import adapter_device, assign_parameter
from peftkit.layers.shared import shared_tensors
from peftkit.layers.walk import AdapterModule
from peftkit.locking import exclusive
from peftkit.methods.spec import EMBEDDING_LAYER_NAMES, SPECS, method_of

_MAX_KEYS_IN_ERROR = 10


class AdapterTensor(NamedTuple):
    """One tensor of an adapter's checkpoint: the live tensor, whether a file must contain it, and its key in
    ``model.state_dict()`` (``source``, wrapper segments included: where a load assigns it). A named tuple: a
    load or a hot-swap builds one per adapter tensor, and a frozen dataclass costs several times more."""

    tensor: torch.Tensor
    required: bool
    source: str = ""


def wants_embedding_layers(
    config: PeftConfig, save_embedding_layers: bool | str, model: nn.Module | None = None
) -> bool:
    """Whether a save includes embedding weights: the method's rule (PEFT's: ``"auto"`` saves the base weights of
    adapted embedding layers when the targets name one), a regex target matching one in ``model``, or -- for
    ``"auto"`` -- a vocabulary of ``model`` that differs from its base model's (see :mod:`peftkit.io.embeddings`)."""
    if method_of(config).embedding_rule(config, save_embedding_layers):
        return True
    if save_embedding_layers != "auto":
        return False
    if targets_embedding(config, model):
        return True
    return model is not None and vocab_resized(model, default_base_path(config, model))


def adapter_tensors(
    model: nn.Module,
    adapter: str,
    config: PeftConfig,
    embedding_layers: bool | None = None,
    modules: Iterable[tuple[str, AdapterModule]] | None = None,
) -> dict[str, AdapterTensor]:
    """Every tensor that belongs in ``adapter``'s checkpoint, keyed as on disk (without the model prefix).

    Args:
        embedding_layers: Include base weights of adapted embedding layers; ``None`` includes them as
            optional keys (what a load accepts).
        modules: ``iter_adapter_modules(model)``, when the caller has just walked the model (a hot-swap).
    """
    spec = method_of(config)
    renames = spec.file_key_renames
    out: dict[str, AdapterTensor] = {}
    adapted_embedding = False
    base_bias = spec.bias_rule(config) == "adapter_layers"
    for raw, module in iter_adapter_modules(model) if modules is None else modules:
        if not module.holds(adapter):
            continue
        name = strip_wrapper_segments(raw)  # FSDP1 / compile wrappers never reach a file
        if isinstance(module, ModulesToSaveWrapper):
            for key, tensor in module.modules_to_save[adapter].state_dict().items():
                out[f"{name}.{key}"] = AdapterTensor(tensor, True, f"{raw}.modules_to_save.{adapter}.{key}")
            continue
        _add_layer_tensors(out, name, raw, module, adapter, renames)
        adapted_embedding |= _add_base_tensors(out, name, raw, module, base_bias, embedding_layers)
    out.update(_model_tensors(model, adapter, config))
    if embedding_layers is None or (embedding_layers and not adapted_embedding):
        _add_plain_embeddings(out, model)
    if spec.bias_rule(config) == "all":
        for raw_key, tensor in model.state_dict(keep_vars=False).items():
            key = strip_wrapper_segments(raw_key)
            if key.endswith("bias") and key not in out and not _is_adapter_internal(key):
                out[key] = AdapterTensor(tensor, False, raw_key)
    return out


def _add_layer_tensors(
    out: dict[str, AdapterTensor], name: str, raw: str, layer: AdapterLayer, adapter: str, renames: Mapping[str, str]
) -> None:
    """Add ``adapter``'s tensors in ``layer``'s per-adapter containers, keyed as on disk (the adapter name removed,
    the method's renames applied): ``<name>.<container>.<key>`` for the usual factor modules."""
    modules = layer._modules
    for attr in layer.adapter_layer_names:
        item = _entry(modules[attr] if attr in modules else getattr(layer, attr), adapter)
        if item is None:
            continue
        tail = f".{attr}.{adapter}"
        if not isinstance(item, nn.Module):
            disk = rename_suffix(f"{name}.{attr}", renames)  # a bare parameter: the adapter name was the suffix
            out[disk] = AdapterTensor(item.data, True, raw + tail)
            continue
        for key, tensor in module_tensors(item):
            # a leaf's ``<attr>.<adapter>.<key>`` loses ``.<adapter>`` on disk; a nested key keeps the general rule
            disk = f"{name}.{attr}.{key}" if "." not in key else remove_adapter_name(f"{name}{tail}.{key}", adapter)
            out[rename_suffix(disk, renames)] = AdapterTensor(tensor, True, f"{raw}{tail}.{key}")


def _entry(container: Any, adapter: str) -> Any:
    """``container[adapter]`` of a per-adapter ``ModuleDict`` / ``ParameterDict``, or ``None`` when absent (a
    ModuleDict's children read directly: this runs for every container of every layer of a load or a swap)."""
    if isinstance(container, nn.ModuleDict):
        return container._modules.get(adapter)
    return container[adapter] if adapter in container else None


def _model_tensors(model: nn.Module, adapter: str, config: PeftConfig) -> dict[str, AdapterTensor]:
    """The tensors ``adapter`` holds once per model, keyed ``base_model.<name>`` as PEFT saves them, when its
    method saves them (else a load re-creates them from the config)."""
    tensors, holder = method_of(config).model_tensors, shared_tensors(model)
    if tensors is None or holder is None or not holder.holds(adapter) or not tensors.saved(config):
        return {}
    return {TUNER_PREFIX + key: AdapterTensor(tensor, True) for key, tensor in holder.get(adapter).items()}


def module_tensors(module: nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    """``module.state_dict().items()``, read straight from a plain leaf module's dictionaries (the general
    ``state_dict`` machinery costs more than the rest of a hot-swap for small adapter factors)."""
    plain = (
        not module._modules
        and not module._state_dict_hooks
        and not module._state_dict_pre_hooks
        and type(module)._save_to_state_dict is nn.Module._save_to_state_dict
        and type(module).get_extra_state is nn.Module.get_extra_state
    )
    if not plain:
        return module.state_dict().items()
    params = [(k, v.detach()) for k, v in module._parameters.items() if v is not None]
    skip = module._non_persistent_buffers_set
    return params + [(k, v.detach()) for k, v in module._buffers.items() if v is not None and k not in skip]


def _add_plain_embeddings(out: dict[str, AdapterTensor], model: nn.Module) -> None:
    """The whole input / output embedding layers (a resized vocabulary): written when asked for, accepted by a
    load, never required."""
    for raw, module in plain_embedding_modules(model, skip=(AdapterLayer, ModulesToSaveWrapper)):
        name = strip_wrapper_segments(raw)
        for key, tensor in module.state_dict().items():
            out.setdefault(
                f"{name}.{key}" if name else key, AdapterTensor(tensor, False, f"{raw}.{key}" if raw else key)
            )


def _add_base_tensors(
    out: dict[str, AdapterTensor],
    name: str,
    raw: str,
    layer: AdapterLayer,
    base_bias: bool,
    embedding_layers: bool | None,
) -> bool:
    """Add the base tensors saved with ``layer`` (``base_bias``: its base layer's bias, ``bias="lora_only"``);
    returns whether ``layer`` adapts an embedding layer."""
    base = layer.get_base_layer()
    if base_bias and getattr(base, "bias", None) is not None:
        out[f"{name}.base_layer.bias"] = AdapterTensor(base.bias.data, False, f"{raw}.base_layer.bias")
    is_embedding = isinstance(base, nn.Embedding) or name.rsplit(".", 1)[-1] in EMBEDDING_LAYER_NAMES
    if is_embedding and (embedding_layers is None or embedding_layers):
        out[f"{name}.base_layer.weight"] = AdapterTensor(base.weight.data, False, f"{raw}.base_layer.weight")
    return is_embedding


def _is_adapter_internal(key: str) -> bool:
    if ".original_module." in key or ".modules_to_save." in key:
        return True
    return any(f".{spec.prefix}" in key for spec in SPECS.values() if spec.prefix)


def adapter_state_dict(
    model: nn.Module,
    adapter: str,
    config: PeftConfig,
    save_embedding_layers: bool | str = "auto",
    state_dict: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The tensors to save for ``adapter`` (keys as on disk, without the model prefix).

    Args:
        state_dict: A full state dict of ``model`` or of a wrapper around it (e.g. gathered from FSDP2 / ZeRO-3
            shards): the values are taken from it instead of the live parameters (see :mod:`peftkit.io.sharded`).
    """
    embedding = wants_embedding_layers(config, save_embedding_layers, model)
    entries = adapter_tensors(model, adapter, config, embedding)
    if state_dict is not None:
        state = select_state(model, entries, state_dict)
    else:
        state = {k: v.tensor for k, v in entries.items()}
    finalize = method_of(config).finalize_state
    return finalize(config, state) if finalize is not None else state


class LoadReport(NamedTuple):
    """What :func:`check_and_load` did besides filling the adapter (keys as on disk, without the model prefix)."""

    absent: list[str]  #: optional adapter keys the checkpoint left out (e.g. base embedding weights)
    unexpected: list[str]  #: checkpoint keys that fit no tensor of the adapter or the base model: ignored
    base: list[str]  #: base-model tensors the config does not declare, loaded into the base (PEFT loads them)


def _extra_keys(
    model: nn.Module, expected: Mapping[str, AdapterTensor], state: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str]]:
    """The keys of ``state`` outside ``expected``, split into base-model tensors of ``model`` (e.g. the biases of a
    ``bias="all"`` checkpoint loaded with another ``bias``) and keys that fit nothing.

    Raises:
        CheckpointError: a base-model tensor of another shape than the model's.
    """
    extra = sorted(k for k in state if k not in expected)
    if not extra:
        return [], []
    live = model.state_dict(keep_vars=True)
    base = [k for k in extra if k in live and not _is_adapter_internal(k)]
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(live[k].shape)}" for k in base
             if live[k].shape != state[k].shape]  # fmt: skip
    if wrong:
        raise CheckpointError(f"The checkpoint's base-model tensors do not fit this model: {_some(wrong)}.")
    return base, [k for k in extra if k not in base]


def _warn_extra(adapter: str, report: LoadReport) -> None:
    if report.base:
        warnings.warn(
            f"The checkpoint of adapter {adapter!r} holds base-model tensors that its config does not save (another "
            f"`bias` setting?): {_some(report.base)}. They were loaded into the base model, as peft does.",
            stacklevel=4,
        )
    if report.unexpected:
        warnings.warn(
            f"Ignored checkpoint keys of adapter {adapter!r} that match no tensor of the adapter or of the model: "
            f"{_some(report.unexpected)}. Check that the adapter_config.json and the base model are the ones the "
            "adapter was trained with.",
            stacklevel=4,
        )


def _check_fit(
    adapter: str,
    expected: Mapping[str, AdapterTensor],
    state: Mapping[str, torch.Tensor],
    allow_missing: Collection[str],
    ignore_mismatched_sizes: bool,
) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """Raise :class:`CheckpointError` naming every key of ``expected`` that ``state`` lacks and every tensor that
    does not fit; returns the shape mismatches that ``ignore_mismatched_sizes`` lets through (``(key, checkpoint
    shape, model shape)``). Keys of ``state`` outside ``expected`` are not checked here (see :func:`_extra_keys`)."""
    missing = sorted(k for k, v in expected.items() if v.required and k not in state and k not in allow_missing)
    problems: list[str] = []
    if missing:
        problems.append(f"missing keys: {_some(missing)}")
    mismatched = [
        (k, tuple(v.shape), tuple(expected[k].tensor.shape))
        for k, v in state.items()
        if k in expected and v.shape != expected[k].tensor.shape
    ]
    wrong_kind = [
        f"{k}: {v.dtype}"
        for k, v in state.items()
        if k in expected and expected[k].tensor.is_floating_point() and not v.is_floating_point()
    ]
    if wrong_kind:
        problems.append(f"non-floating-point tensors where weights belong: {_some(wrong_kind)}")
    if mismatched and not ignore_mismatched_sizes:
        problems.append(
            "shape mismatch: "
            + "; ".join(f"{k}: checkpoint {a} vs model {b}" for k, a, b in mismatched[:_MAX_KEYS_IN_ERROR])
        )
    if problems:
        raise CheckpointError(
            f"The checkpoint does not fit adapter {adapter!r} of this model ({' | '.join(problems)}). Check that "
            "the base model and the adapter_config.json are the ones the adapter was trained with."
        )
    return mismatched


@exclusive
def check_and_load(
    model: nn.Module,
    adapter: str,
    config: PeftConfig,
    state: Mapping[str, torch.Tensor],
    *,
    ignore_mismatched_sizes: bool = False,
    allow_missing: Collection[str] = (),
    dry_run: bool = False,
) -> LoadReport:
    """Copy ``state`` (disk keys, prefix removed) into ``adapter``'s tensors after checking all of it
    (``dry_run``: only check).

    As peft does, a checkpoint key that names a base-model tensor of the same shape (the biases of a
    ``bias="all"`` checkpoint loaded with ``bias="none"``) is loaded into the base model, and a key that fits
    nothing is ignored; both are named in a warning and in the returned report.

    Raises:
        CheckpointError: required keys missing, or shape mismatches (named with both shapes); the model is not
            touched in that case.
    """
    expected = adapter_tensors(model, adapter, config, embedding_layers=None)
    state = _without_wrapper_prefixes(state, expected)
    mismatched = _check_fit(adapter, expected, state, allow_missing, ignore_mismatched_sizes)
    base, unexpected = _extra_keys(model, expected, state)
    report = LoadReport(sorted(k for k in expected if k not in state), unexpected, base)
    if dry_run:
        return report
    _warn_extra(adapter, report)
    skip = {k for k, _, _ in mismatched}
    live = model.state_dict(keep_vars=True) if base else {}
    with torch.no_grad():
        for key in base:
            live[key].copy_(state[key].to(live[key].dtype))
        for key, value in state.items():
            if key in skip or key not in expected:
                continue
            target = expected[key].tensor
            if target.is_meta and expected[key].source:  # low_cpu_mem_usage / meta base: a copy keeps no value
                assign_parameter(model, expected[key].source, value.to(_home(model, expected[key].source, value)))
            else:
                target.copy_(value)  # copy_ converts the dtype
    return report


def _without_wrapper_prefixes(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, AdapterTensor]
) -> Mapping[str, torch.Tensor]:
    """``state`` with keys written through a wrapper (``module.``, ``_orig_mod.``, ``_fsdp_wrapped_module.``)
    renamed to the adapter's own keys; other keys are kept as they are (and reported if unexpected)."""
    if all(key in expected for key in state):
        return state
    renamed = match_keys([k for k in state if k not in expected], expected.keys())
    return {renamed.get(key, key): value for key, value in state.items()}


def _home(model: nn.Module, source: str, value: torch.Tensor) -> torch.device:
    """Where a loaded adapter tensor goes: beside its layer's weights (see ``adapter_device``), or where it was
    read to when the base itself is on ``meta``."""
    parts = source.split(".")
    for end in range(len(parts) - 1, 0, -1):
        module = model.get_submodule(".".join(parts[:end]))
        if isinstance(module, AdapterLayer):
            device = adapter_device(module.get_base_layer(), allow_meta=False)
            return value.device if device.type == "meta" else device
    return value.device


def _some(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_KEYS_IN_ERROR])
    return shown + (f" (and {len(keys) - _MAX_KEYS_IN_ERROR} more)" if len(keys) > _MAX_KEYS_IN_ERROR else "")
