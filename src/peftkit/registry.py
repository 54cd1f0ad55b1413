"""The adapter methods peftkit implements, as :class:`~peftkit.methods.spec.MethodSpec` objects.

:data:`peftkit.catalog.METHOD_SPECS` names them (one line per method); this module imports each spec and
registers it with the core (:func:`~peftkit.methods.spec.register_method`). It sits above every method and
below the shells (``PeftModel``, the transformers integration, the CLI), which import it; ``import peftkit``
imports it before anything can ask for a method.
"""

from __future__ import annotations

import importlib

from peftkit.catalog import METHOD_SPECS
from peftkit.config import PeftConfig
from peftkit.errors import ConfigError
from peftkit.methods.spec import SPECS, MethodSpec, method_for, method_of, register_method
from peftkit.types import PeftType

__all__ = ["METHODS", "config_class_for", "method_for", "method_of", "method_of_name", "public_names"]


def _load(name: str, location: str) -> MethodSpec:
    """Import the spec at ``"module:attribute"`` and check that it describes method ``name``."""
    module_name, _, attribute = location.partition(":")
    spec = getattr(importlib.import_module(module_name), attribute)
    if not isinstance(spec, MethodSpec) or spec.peft_type != PeftType(name):
        raise ConfigError(f"catalog entry {name!r}: {location} is not the MethodSpec of {name}.")
    return spec


for _name, _location in METHOD_SPECS.items():
    register_method(_load(_name, _location))

#: ``PeftType`` -> spec, in catalog order.
METHODS: dict[PeftType, MethodSpec] = SPECS


def config_class_for(peft_type: PeftType | str) -> type[PeftConfig]:
    """The config class for ``peft_type``."""
    return method_for(peft_type).config_class


def public_names() -> dict[str, object]:
    """Every name the methods export through ``peftkit`` (``LoraConfig``, ``IA3Model``, ``PromptEncoder``...).

    Raises:
        ConfigError: two methods export the same name.
    """
    names: dict[str, object] = {}
    for spec in METHODS.values():
        for name, obj in spec.public_names.items():
            if name in names and names[name] is not obj:
                raise ConfigError(f"{spec.peft_type.value} exports {name!r}, which another method exports too.")
            names[name] = obj
    return names


def method_of_name(cli_name: str) -> MethodSpec | None:
    """The spec whose ``peftkit train --method`` value is ``cli_name``, or ``None``."""
    return next((spec for spec in METHODS.values() if spec.cli_name == cli_name), None)
