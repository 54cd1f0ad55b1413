"""Embedding layers saved with an adapter: PEFT's ``save_embedding_layers`` rule.

With ``save_embedding_layers="auto"`` an adapter file also carries

* the base weights of adapted embedding layers (``embed_tokens`` / ``lm_head`` among the targets), and
* the whole input and output embedding layers when the vocabulary was resized: the model's ``vocab_size``
  differs from the one in its base model's ``config.json``. New token rows are trained (or initialised) with
  the adapter, so without them a reload on a base resized the same way gives other outputs for the new ids.

Keys are the layers' own (``model.embed_tokens.weight``, ``lm_head.weight``); a load copies them into the base.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from typing import Any

from torch import nn

from peftkit.methods.spec import EMBEDDING_LAYER_NAMES


def vocab_size_of(config: Any) -> int | None:
    """``vocab_size`` of a transformers config (of its text part for multimodal configs), or ``None``."""
    size = getattr(config, "vocab_size", None)
    if size is None and hasattr(config, "get_text_config"):
        size = getattr(config.get_text_config(), "vocab_size", None)
    return size if isinstance(size, int) else None


def base_vocab_size(model: nn.Module, base_path: str | None) -> int | None:
    """The vocabulary size in the base model's own ``config.json`` (a local directory or a cached hub repo),
    or ``None`` when it cannot be read (a model built from a config, offline, no such file)."""
    config = getattr(model, "config", None)
    if config is None or not base_path or not hasattr(type(config), "from_pretrained"):
        return None
    from peftkit.io.hub import resolve_file

    try:
        if resolve_file(base_path, "config.json") is None:
            return None
        return vocab_size_of(type(config).from_pretrained(base_path))
    except (OSError, ValueError) as exc:  # unreachable hub, unreadable file: PEFT assumes "not resized" too
        warnings.warn(
            f"Could not read the base config at {base_path!r} ({exc}); assuming the vocabulary was not resized.",
            stacklevel=4,
        )
        return None


def vocab_resized(model: nn.Module, base_path: str | None) -> bool:
    """Whether ``model``'s vocabulary differs from its base model's (then the embedding layers are saved)."""
    current = vocab_size_of(getattr(model, "config", None))
    if current is None:
        return False
    base = base_vocab_size(model, base_path)
    if base is None or base == current:
        return False
    warnings.warn(
        f"The vocabulary was resized ({base} tokens in {base_path!r}, {current} now): the input and output "
        "embedding layers are saved with the adapter (save_embedding_layers='auto').",
        stacklevel=4,
    )
    return True


def plain_embedding_modules(model: nn.Module, skip: tuple[type, ...] = ()) -> Iterator[tuple[str, nn.Module]]:
    """``(name, module)`` of the model's input and output embedding layers, unless they are of a ``skip`` type
    (adapter layers and modules_to_save wrappers are saved their own way)."""
    wanted: list[nn.Module] = []
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        try:
            module = getattr(model, getter)() if hasattr(model, getter) else None
        except (NotImplementedError, AttributeError):
            module = None
        if isinstance(module, nn.Module) and not isinstance(module, skip):
            wanted.append(module)
    stack: list[tuple[str, nn.Module]] = [("", model)]
    while stack and wanted:  # a walk that skips the insides of adapter layers, and stops once all are found
        name, module = stack.pop()
        if any(module is w for w in wanted):
            wanted = [w for w in wanted if w is not module]
            yield name, module
        if not isinstance(module, skip):
            prefix = name + "." if name else ""
            stack.extend((prefix + key, child) for key, child in reversed(module._modules.items()) if child is not None)


def targets_embedding(config: Any, model: nn.Module | None = None) -> bool:
    """Whether ``config``'s targets name an embedding layer: a listed ``embed_tokens`` / ``lm_head``, or a regex
    matching a module of ``model`` with such a name (PEFT's rule)."""
    if getattr(config, "trains_token_rows", False):  # PEFT: adapters training token rows never save whole tables
        return False
    targets = getattr(config, "target_modules", None) or ()
    if isinstance(targets, str):
        if model is None or targets == "all-linear":
            return False
        return any(
            name.rsplit(".", 1)[-1] in EMBEDDING_LAYER_NAMES and re.fullmatch(targets, name)
            for name, _ in model.named_modules()
        )
    return any(str(name).rsplit(".", 1)[-1] in EMBEDDING_LAYER_NAMES for name in targets)


def default_base_path(config: Any, model: nn.Module) -> str | None:
    """Where the base model came from: the config's ``base_model_name_or_path``, else the model's own."""
    path = getattr(config, "base_model_name_or_path", None)
    if path:
        return os.fspath(path)
    name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    return name or None
