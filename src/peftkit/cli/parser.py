"""Argument parsers built from typed command functions.

A command is a plain function with annotated keyword parameters and a Google-style docstring. Each
parameter becomes an option: ``max_steps: int | None = None`` -> ``--max-steps N``; a parameter without a
default becomes a positional argument, or a required option when it is keyword-only (after ``*``);
``bool`` becomes a flag; ``Literal[...]`` gives the allowed
choices; the ``Args:`` section of the docstring gives each option's help. So a command's ``--help`` and its
Python signature cannot drift apart.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import types
import typing
from collections.abc import Callable
from typing import Any, NoReturn


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr (exit code 2), pointing at ``--help``."""

    def error(self, message: str) -> NoReturn:
        """Exit with code 2 and one line on stderr."""
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def docstring_parts(function: Callable[..., Any]) -> tuple[str, str, dict[str, str]]:
    """``(summary, description, {parameter: help})`` from a Google-style docstring."""
    doc = inspect.cleandoc(function.__doc__ or "")
    head, _, rest = doc.partition("\nArgs:\n")
    summary, _, description = head.partition("\n")
    helps: dict[str, str] = {}
    current = None
    for line in rest.splitlines():
        match = re.match(r"^    (\w+): (.*)$", line)
        if match:
            current = match.group(1)
            helps[current] = match.group(2)
        elif line.startswith("        ") and current:
            helps[current] += " " + line.strip()
        elif line.strip() and not line.startswith(" "):
            break  # next section (Returns:, Raises:, ...)
    return summary.strip(), description.strip(), helps


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def add_parameter(parser: argparse.ArgumentParser, name: str, param: inspect.Parameter, kind: Any, help: str) -> None:
    """Add one function parameter to ``parser`` (see the module docstring for the rules)."""
    kind = _unwrap_optional(kind)
    options: dict[str, Any] = {"help": help}
    if typing.get_origin(kind) is typing.Literal:
        options["choices"] = list(typing.get_args(kind))
        kind = type(options["choices"][0])
    flag = "--" + name.replace("_", "-")
    if param.default is inspect.Parameter.empty:
        if param.kind is inspect.Parameter.KEYWORD_ONLY:  # a required option
            parser.add_argument(
                flag, dest=name, type=kind, required=True, metavar=name.split("_")[-1].upper(), **options
            )
        else:
            parser.add_argument(name, type=kind, metavar=name.upper(), **options)
        return
    if kind is bool:
        action = argparse.BooleanOptionalAction if param.default else "store_true"
        parser.add_argument(flag, dest=name, action=action, default=param.default, **options)
        return
    if param.default is not None and "default" not in help:
        options["help"] = f"{help} (default: {param.default})"
    metavar = None if "choices" in options else name.split("_")[-1].upper()
    parser.add_argument(flag, dest=name, type=kind, default=param.default, metavar=metavar, **options)


def add_command(
    subparsers: argparse._SubParsersAction,
    name: str,
    function: Callable[..., int],
    epilog: str = "",
    extra_options: Callable[[argparse.ArgumentParser], list[str]] | None = None,
) -> argparse.ArgumentParser:
    """A subcommand ``name`` whose options are ``function``'s parameters.

    A ``**kwargs`` parameter receives the options ``extra_options(parser)`` adds (it returns their ``dest``
    names), e.g. the per-method options of ``peftkit train``, which come from the method specs.
    """
    summary, description, helps = docstring_parts(function)
    parser = subparsers.add_parser(
        name,
        help=summary,
        description=f"{summary}\n\n{description}".strip(),
        epilog=epilog or None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    hints = typing.get_type_hints(function)
    for pname, param in inspect.signature(function).parameters.items():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            continue
        if pname not in helps:
            raise TypeError(f"{function.__name__}: parameter {pname!r} has no help text in its docstring.")
        add_parameter(parser, pname, param, hints[pname], helps[pname])
    extra = extra_options(parser) if extra_options is not None else []
    parser.set_defaults(_function=function, _extra=extra)
    return parser


def call(namespace: argparse.Namespace) -> int:
    """Call the command function chosen by the parser with the parsed options."""
    function = namespace._function
    names = {*inspect.signature(function).parameters, *getattr(namespace, "_extra", ())}
    return function(**{k: v for k, v in vars(namespace).items() if k in names})


def stderr_line(message: str) -> None:
    """Print ``message`` on stderr collapsed to a single line."""
    print(" ".join(str(message).split()), file=sys.stderr)
