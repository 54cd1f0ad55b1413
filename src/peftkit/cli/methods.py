"""``--method`` names and the per-method options of ``peftkit train``, all read from the method specs.

Each method's spec (:class:`~peftkit.methods.spec.MethodSpec`) gives its ``--method`` value (``cli_name``),
the options it accepts (``cli_options``: option -> config field, type, help, default), its default learning
rate and any last edit of the fields (``cli_config``), so a new method appears on the command line with its
catalog line alone.
"""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING, Any, Literal

from peftkit.cli.errors import CliError
from peftkit.config import PeftConfig
from peftkit.methods.spec import CliOption, MethodSpec
from peftkit.registry import METHODS, method_of_name


def cli_specs() -> list[MethodSpec]:
    """The specs of the methods ``peftkit train`` offers, in catalog order."""
    return [spec for spec in METHODS.values() if spec.cli_name]


if TYPE_CHECKING:
    MethodName = str
else:  # the choices of ``--method``, one per spec (a Literal the parser turns into argparse choices)
    MethodName = Literal[tuple(spec.cli_name for spec in cli_specs())]


def spec_for_method(method: str) -> MethodSpec:
    """The spec of ``--method`` value ``method``.

    Raises:
        CliError: no method has that name.
    """
    spec = method_of_name(method)
    if spec is None:
        raise CliError(f"--method {method!r} is not known; use one of: {', '.join(s.cli_name for s in cli_specs())}.")
    return spec


def option_table() -> dict[str, dict[str, CliOption]]:
    """Option name -> {method: its :class:`CliOption`}, over every method (in catalog order).

    Raises:
        CliError: two methods declare the same option with different types.
    """
    table: dict[str, dict[str, CliOption]] = {}
    for spec in cli_specs():
        for option in spec.cli_options:
            table.setdefault(option.name, {})[spec.cli_name] = option
    for name, per_method in table.items():
        if len({o.type for o in per_method.values()}) > 1:
            raise CliError(f"--{name.replace('_', '-')} has different types in {', '.join(per_method)}.")
    return table


def add_method_options(parser: argparse.ArgumentParser) -> list[str]:
    """Add every method's options to ``parser`` (each once, its help naming the methods it applies to).

    Returns:
        The options' ``dest`` names (what :func:`peftkit.cli.parser.call` hands to the command).
    """
    group = parser.add_argument_group("method options (each applies to the methods named in its help)")
    for name, per_method in option_table().items():
        first = next(iter(per_method.values()))
        defaults = ", ".join(f"{m}: {o.default}" for m, o in per_method.items() if o.default is not None)
        helps = {o.help for o in per_method.values()}
        text = first.help if len(helps) == 1 else "; ".join(f"{m}: {o.help}" for m, o in per_method.items())
        help_text = f"{text} ({', '.join(per_method)})" + (f" (default: {defaults})" if defaults else "")
        flag = "--" + name.replace("_", "-")
        if first.type is bool:
            group.add_argument(flag, dest=name, action="store_true", default=False, help=help_text)
        else:
            metavar = name.split("_")[-1].upper()
            group.add_argument(flag, dest=name, type=first.type, default=None, metavar=metavar, help=help_text)
    return list(option_table())


def parse_modules(value: str | None) -> list[str] | str | None:
    r"""``"q_proj,v_proj"`` -> a list of names; ``"all-linear"`` or a regex (``.*\.(q|v)_proj``) stay a string."""
    if value is None or value == "all-linear":
        return value
    if re.fullmatch(r"[\w.\-]+(\s*,\s*[\w.\-]+)*", value.strip()) and not re.search(r"\.[*+?]", value):
        return [name.strip() for name in value.split(",")]
    try:
        re.compile(value)
    except re.error as exc:
        raise CliError(f"--target-modules {value!r} is neither a list of names nor a valid regex ({exc}).") from None
    return value


def parse_parameters(value: str) -> list[str]:
    """``"experts.gate_up_proj, experts.down_proj"`` -> the list of parameter names (``target_parameters``).

    Raises:
        CliError: an empty name or one that is not a dotted identifier.
    """
    names = [name.strip() for name in value.split(",")]
    bad = [name for name in names if not re.fullmatch(r"[\w.]+", name) or name.startswith(".") or name.endswith(".")]
    if bad:
        raise CliError(
            f"--target-parameters {value!r}: {bad[0]!r} is not a parameter name; pass comma-separated "
            "<module>.<parameter> names such as experts.down_proj."
        )
    return names


def _field_value(option: CliOption, value: Any) -> Any:
    if option.field in ("target_modules", "feedforward_modules"):
        return parse_modules(value)
    if option.field == "target_parameters":
        return parse_parameters(value)
    if isinstance(value, float) and value.is_integer() and option.field in ("lora_alpha", "alpha"):
        return int(value)
    return value


def method_fields(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """Config fields from command-line ``options`` (``None``/``False`` = not given), checked against ``method``.

    Raises:
        CliError: an option that ``method`` does not accept was given.
    """
    spec = spec_for_method(method)
    accepted = {option.name: option for option in spec.cli_options}
    given = {name for name, value in options.items() if value is not None and value is not False}
    fields: dict[str, Any] = {
        o.field: _field_value(o, o.default)
        for o in spec.cli_options
        if o.default is not None and not given.intersection(o.default_unless)
    }
    table = option_table()
    for name, value in options.items():
        if value is None or value is False:
            continue
        if name not in accepted:
            flag = "--" + name.replace("_", "-")
            applies = ", ".join(table.get(name, {}))
            raise CliError(f"{flag} does not apply to --method {method} (it applies to: {applies}).")
        fields[accepted[name].field] = _field_value(accepted[name], value)
    return fields


def build_config(method: str, options: dict[str, Any], total_steps: int) -> PeftConfig:
    """The config for ``method`` from command-line ``options`` for a causal LM.

    Args:
        method: A ``--method`` value.
        options: Option name -> value, ``None`` when not given.
        total_steps: Number of optimiser steps (AdaLoRA's schedule needs it as ``total_step``).
    """
    spec = spec_for_method(method)
    fields = method_fields(method, options)
    if spec.cli_config is not None:
        fields = spec.cli_config(fields, total_steps)
    return spec.config_class(task_type="CAUSAL_LM", **fields)


def describe(config: PeftConfig) -> str:
    """A short human description such as ``LORA r=8 alpha=16 on all-linear``."""
    parts = [str(config.peft_type)]
    names = ("init_r", "target_r") if hasattr(config, "target_r") else ("r",)
    for name in (
        *names,
        "lora_alpha",
        "alpha",
        "num_virtual_tokens",
        "oft_block_size",
        "boft_block_size",
        "boft_block_num",
    ):
        if getattr(config, name, 0) != 0:  # OFT / BOFT set a block size or a count, the other is 0
            parts.append(f"{name.replace('lora_', '')}={getattr(config, name)}")
    targets = getattr(config, "target_modules", None)
    if targets:
        parts.append("on " + (targets if isinstance(targets, str) else ",".join(sorted(targets))))
    if getattr(config, "target_parameters", None):
        parts.append("on parameters " + ",".join(config.target_parameters))  # type: ignore[attr-defined]  # checked just above
    return " ".join(parts)
