"""``peftkit`` command line: a table of typed command functions (see :mod:`peftkit.cli.parser`).

    peftkit                      # = peftkit train: the built-in job
    peftkit train --model DIR --data FILE --method lora --r 16
    peftkit merge ADAPTER_DIR --output-dir DIR
    peftkit inspect ADAPTER_DIR
    peftkit convert ADAPTER_DIR

Errors in arguments or files are printed as one line (``peftkit: error: ...``) with exit code 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from peftkit.cli.errors import CliError
from peftkit.cli.parser import OneLineParser, add_command, call, stderr_line
from peftkit.errors import PeftkitError


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, the typed function that implements it, and usage examples."""

    name: str
    function: Callable[..., int]
    examples: str = ""
    extra_options: Callable[[argparse.ArgumentParser], list[str]] | None = None


def _commands() -> tuple[Command, ...]:
    from peftkit.cli.convert import convert
    from peftkit.cli.inspect import inspect
    from peftkit.cli.merge import merge
    from peftkit.cli.methods import add_method_options
    from peftkit.cli.train import train

    return (
        Command(
            "train",
            train,
            "examples:\n  peftkit train\n  peftkit train --model ./llama --data qa.jsonl "
            "--method lora --r 16 --target-modules q_proj,v_proj --epochs 2 --output-dir out",
            add_method_options,
        ),
        Command("merge", merge, "example:\n  peftkit merge peftkit-output/adapter --output-dir merged-model"),
        Command("inspect", inspect, "example:\n  peftkit inspect peftkit-output/adapter"),
        Command(
            "convert",
            convert,
            "examples:\n  peftkit convert old-adapter\n  peftkit convert old-adapter --output-dir new-adapter",
        ),
    )


#: Exceptions that mean "bad arguments or files": shown as one line, exit code 2.
USER_ERRORS: tuple[type[BaseException], ...] = (CliError, PeftkitError, OSError, ValueError, ImportError)


def build_parser() -> argparse.ArgumentParser:
    """The ``peftkit`` parser with one subparser per entry of the command table."""
    parser = OneLineParser(
        prog="peftkit",
        description="Parameter-efficient fine-tuning with PEFT's API and file format. With no command, runs "
        "`peftkit train` (the built-in job: LoRA teaches a tiny model to spell words backwards, offline, "
        "in about two minutes on 2 CPU cores).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `peftkit COMMAND --help` for the options of each command.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and library warnings")
    parser.add_argument("--version", action="version", version=f"peftkit {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for command in _commands():
        add_command(sub, command.name, command.function, command.examples, command.extra_options)
    return parser


def _version() -> str:
    import peftkit

    return peftkit.__version__


def _with_default_command(argv: list[str], commands: Sequence[str]) -> list[str]:
    """Insert ``train`` when no command is named (``peftkit``, ``peftkit --max-steps 5``)."""
    first = next((a for a in argv if a != "--debug"), None)
    if first is not None and (first in commands or first in ("-h", "--help", "--version") or first[0] != "-"):
        return argv
    position = 1 if argv[:1] == ["--debug"] else 0
    return [*argv[:position], "train", *argv[position:]]


@contextmanager
def quiet_libraries(enabled: bool = True) -> Iterator[None]:
    """Keep the terminal to peftkit's own lines and the Trainer's progress bar while a command runs.

    transformers' logging and loading bars, and library ``UserWarning``s, are silenced, and put back as they
    were afterwards (``main`` may run inside a larger program, e.g. a test session).
    """
    if not enabled:
        yield
        return
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hub_bars_off = hub_utils.are_progress_bars_disabled()
    torch_logger = logging.getLogger("torch")
    torch_level = torch_logger.level
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Loading weights" bars; the Trainer's bar stays
    hub_utils.enable_progress_bars()  # keep download bars for hub models
    torch_logger.setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module=r"(torch|transformers|accelerate)\b.*")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
        (hub_utils.disable_progress_bars if hub_bars_off else hub_utils.enable_progress_bars)()
        torch_logger.setLevel(torch_level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 failed check, 2 bad arguments or files)."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = _with_default_command(args, [c.name for c in _commands()])
    namespace = parser.parse_args(args)
    try:
        with quiet_libraries(enabled=not namespace.debug):
            return call(namespace)
    except KeyboardInterrupt:
        stderr_line("peftkit: interrupted")
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except USER_ERRORS as exc:
        if namespace.debug:
            raise
        stderr_line(f"peftkit {namespace.command}: error: {exc}")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
