"""The model and data that ship with peftkit (``peftkit/data/``), and loading a base causal LM."""

from __future__ import annotations

import os
from typing import Any

from peftkit.cli.errors import CliError

EMBEDDED_MODEL = "tiny-lm"
EMBEDDED_DATA = "reverse"


def embedded_path(name: str) -> str:
    """Path of a folder under ``peftkit/data/`` (installed with the package)."""
    import peftkit

    path = os.path.join(os.path.dirname(peftkit.__file__), "data", name)
    if not os.path.isdir(path):
        raise CliError(f"the built-in {name!r} is missing from {path}; reinstall peftkit.")
    return path


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.path.isabs(name) or name.count("/") > 1 or "\\" in name


def load_causal_lm(name: str | None, dtype: str) -> tuple[Any, Any, str]:
    """``(model, tokenizer, label)`` for ``name`` (a directory or hub id; ``None``: the built-in tiny model).

    The tokenizer gets a pad token (its EOS) when it has none, as batched training and generation need one.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name is not None and _looks_local(name) and not os.path.isdir(os.path.expanduser(name)):
        raise CliError(f"--model {name}: no such directory.")
    path = os.path.expanduser(name) if name else embedded_path(EMBEDDED_MODEL)
    label = name or f"{EMBEDDED_MODEL} (built-in)"
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as exc:
        raise CliError(f"--model {label}: {str(exc).strip().splitlines()[0]}") from exc
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise CliError(f"--model {label}: the tokenizer has neither a pad nor an EOS token.")
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, label
