"""What every method's ``add_weighted_adapter`` shares: checking the inputs, the new adapter's targets, and
adding the new adapter frozen next to the others (PEFT's behaviour: it is neither activated nor trained)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import reduce
from typing import Any

from torch import nn

from peftkit.config import PeftConfig
from peftkit.errors import ConfigError, UsageError
from peftkit.layers.modules_to_save import ModulesToSaveWrapper
from peftkit.layers.walk import iter_adapter_modules


def already_present(tuner: Any, adapter_name: str) -> bool:
    """Whether ``adapter_name`` exists: then ``add_weighted_adapter`` changes nothing (as in PEFT), with a warning."""
    if adapter_name not in tuner.peft_config:
        return False
    warnings.warn(
        f"add_weighted_adapter: an adapter named {adapter_name!r} already exists, so nothing was combined; "
        "delete it first or pick another name.",
        UserWarning,
        stacklevel=3,
    )
    return True


def check_sources(tuner: Any, adapters: Sequence[str], weights: Sequence[float]) -> None:
    """The adapters to combine exist, there is one weight per adapter, and no two of them keep their own copy
    of the same module (``modules_to_save`` copies cannot be combined).

    Raises:
        AdapterNameError: an adapter does not exist. UsageError: no adapters, a weight count that differs from
        the adapter count, or two adapters with ``modules_to_save`` on one module.
    """
    if not adapters:
        raise UsageError("add_weighted_adapter needs at least one adapter to combine.")
    if len(weights) != len(adapters):
        raise UsageError(
            f"add_weighted_adapter got {len(adapters)} adapters but {len(weights)} weights; pass one each."
        )
    tuner.check_names(list(adapters))
    model: nn.Module = tuner.model
    clashes = [
        name
        for name, module in iter_adapter_modules(model)
        if isinstance(module, ModulesToSaveWrapper) and sum(a in module.modules_to_save for a in adapters) > 1
    ]
    if clashes:
        raise UsageError(
            f"Cannot combine adapters that each keep a modules_to_save copy of the same module ({', '.join(clashes)})."
        )


def union_of(configs: Sequence[PeftConfig], field: str) -> set[str] | str | None:
    """The union of ``field`` (a set of names, or a regex) over ``configs``: a set union, or the regexes joined as
    ``(r1)|(r2)|...``.

    Raises:
        ConfigError: some configs give names and others a regex.
    """
    values = [getattr(config, field) for config in configs]
    kinds = {type(value) for value in values}
    if len(kinds) > 1:
        raise ConfigError(
            f"Cannot combine adapters whose {field} mix a list of names and a regex string; give them the same kind."
        )
    if isinstance(values[0], str):
        return "|".join(f"({value})" for value in values)
    if values[0] is None:
        return None
    return reduce(lambda left, right: set(left) | set(right), values, set())


def add_frozen(tuner: Any, adapter_name: str, config: PeftConfig, init_weights: bool = True) -> None:
    """Inject ``adapter_name`` with ``config`` (initialised unless ``init_weights`` is false: the caller then writes
    every tensor itself, and no random number is drawn); an injection leaves a newcomer inactive and frozen, as
    PEFT leaves a combined adapter."""
    tuner.inject_adapter(adapter_name, config, init_weights=init_weights)
