"""``create_arrow_model``: load task LoRA experts (and GenKnowSub's general adapters) into one model and add the
Arrow router over them (PEFT's ``peft.tuners.lora.arrow``, which is this module; the routing itself is in
:mod:`peftkit.methods.lora.variants.arrow`). It builds a ``PeftModel``, so it sits above the LoRA method, beside
``mapping``.

The experts are named ``task_0``, ``task_1``, ... and the general adapters ``gks_0``, ... (PEFT's names); the router
is the adapter ``arrow_router``, a LoRA adapter of the experts' rank on the experts' target modules with
``arrow_config`` set, and is made active.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from torch import nn
from transformers.pytorch_utils import Conv1D

from peftkit.errors import ArgumentTypeError, ConfigError
from peftkit.methods.lora.arrow_config import ArrowConfig
from peftkit.methods.lora.config import LoraConfig
from peftkit.peft_model import PeftModel

__all__ = ["create_arrow_model"]

TASK_ADAPTER_PREFIX = "task_"
GKS_ADAPTER_PREFIX = "gks_"
ROUTER_NAME = "arrow_router"


def _resolve_adapter_source(path: str) -> tuple[str, str | None]:
    """``(model_id, subfolder)`` of an adapter location: a local directory holding ``adapter_config.json`` as is;
    ``"user/repo"`` a hub repository; ``"user/repo/sub/dir"`` that repository's subfolder ``sub/dir``.

    Raises:
        ConfigError: a local directory without ``adapter_config.json``.
    """
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "adapter_config.json")):
            raise ConfigError(f"The adapter directory {path!r} holds no adapter_config.json; pass a saved adapter.")
        return path, None
    parts = path.strip("/").split("/")
    if len(parts) > 2:
        return "/".join(parts[:2]), "/".join(parts[2:])
    return ("/".join(parts) if len(parts) == 2 else path), None


def _source(path: str, kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(model_id, load options)`` for the adapter at ``path``: ``kwargs`` plus the hub ``subfolder`` it names."""
    model_id, subfolder = _resolve_adapter_source(str(path))
    options = dict(kwargs)
    if subfolder is not None:
        options.setdefault("subfolder", subfolder)
    return model_id, options


def expert_layout(model: nn.Module, names: list[str]) -> tuple[list[str], int]:
    """The (short) module names and the rank the adapters ``names`` share.

    Raises:
        ConfigError: two adapters differ in rank or in the modules they adapt.
        ArgumentTypeError: an adapter adapts a layer other than ``nn.Linear`` / ``Conv1D``.
    """
    layouts: dict[str, tuple[set[str], set[int]]] = {}
    for full_name, module in model.named_modules():
        lora_A = getattr(module, "lora_A", None)
        if not isinstance(lora_A, nn.ModuleDict):
            continue
        for name in names:
            if name not in lora_A:
                continue
            base = module.get_base_layer()
            if not isinstance(base, (nn.Linear, Conv1D)):
                raise ArgumentTypeError(
                    f"Arrow routes LoRA experts on Linear and Conv1D layers only; adapter {name!r} adapts "
                    f"{full_name!r}, a {type(base).__name__}."
                )
            modules, ranks = layouts.setdefault(name, (set(), set()))
            modules.add(full_name.rpartition(".")[2])
            ranks.add(int(module.r[name]))
    first = names[0]
    modules0, ranks0 = layouts.get(first, (set(), set()))
    for name in names:
        modules, ranks = layouts.get(name, (set(), set()))
        if ranks != ranks0 or len(ranks0) != 1:
            raise ConfigError(
                f"Arrow mixes experts of one rank: adapter {name!r} has rank {sorted(ranks)}, {first!r} has "
                f"{sorted(ranks0)} (rank mismatch); use experts trained with the same r."
            )
        if modules != modules0:
            raise ConfigError(
                f"Arrow mixes experts on the same modules: adapter {name!r} adapts {sorted(modules)}, {first!r} "
                f"adapts {sorted(modules0)}; use experts trained with the same target_modules."
            )
    return sorted(modules0), next(iter(ranks0))


def create_arrow_model(
    base_model: nn.Module,
    task_specific_adapter_paths: list[str],
    arrow_config: ArrowConfig,
    general_adapter_paths: list[str] | None = None,
    **adapter_kwargs: Any,
) -> Any:
    """A ``PeftModel`` of ``base_model`` with the task experts, the general adapters (with ``use_gks``) and the
    active Arrow router ``arrow_router``.

    Args:
        base_model: The model the experts were trained on.
        task_specific_adapter_paths: Saved LoRA experts (local directories, hub ids, ``user/repo/subfolder``).
        arrow_config: The router's options; not changed (the router's copy records the adapter names).
        general_adapter_paths: General adapters for GenKnowSub (required with ``use_gks``).
        adapter_kwargs: Passed to every load (``PeftModel.from_pretrained`` / ``load_adapter``).

    Raises:
        ConfigError: no task experts; ``use_gks`` without general adapters; adapters of different ranks or modules;
            ``top_k`` larger than the number of experts.
        ArgumentTypeError: an adapter adapts a layer other than ``nn.Linear`` / ``Conv1D``.
    """
    if not task_specific_adapter_paths:
        raise ConfigError("create_arrow_model needs at least one task adapter in task_specific_adapter_paths.")
    if arrow_config.use_gks and not general_adapter_paths:
        raise ConfigError("ArrowConfig.use_gks=True needs the general adapters: pass general_adapter_paths.")
    if arrow_config.top_k > len(task_specific_adapter_paths):
        raise ConfigError(
            f"ArrowConfig.top_k={arrow_config.top_k} is more than the {len(task_specific_adapter_paths)} task "
            "adapters given; lower top_k."
        )
    config = dataclasses.replace(arrow_config)
    config.task_adapter_names = [f"{TASK_ADAPTER_PREFIX}{i}" for i in range(len(task_specific_adapter_paths))]
    general = list(general_adapter_paths or []) if config.use_gks else []
    config.gks_adapter_names = [f"{GKS_ADAPTER_PREFIX}{i}" for i in range(len(general))]
    names = config.task_adapter_names + config.gks_adapter_names
    paths = [*task_specific_adapter_paths, *general]
    model_id, options = _source(paths[0], adapter_kwargs)
    model = PeftModel.from_pretrained(base_model, model_id, adapter_name=names[0], **options)
    for name, path in zip(names[1:], paths[1:]):
        model_id, options = _source(path, adapter_kwargs)
        model.load_adapter(model_id, adapter_name=name, **options)
    modules, r = expert_layout(model, names)
    model.add_adapter(ROUTER_NAME, LoraConfig(r=r, target_modules=modules, arrow_config=config))
    model.set_adapter(ROUTER_NAME)
    return model
