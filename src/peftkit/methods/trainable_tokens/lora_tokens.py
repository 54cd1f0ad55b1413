"""``LoraConfig(trainable_token_indices=...)``: trainable token rows next to a LoRA adapter (PEFT's feature).

A list trains those rows of the input embedding; a dict ``{module name: token ids}`` names each embedding (a module
whose name equals the key or ends with ``.key``). With tied embeddings, every module sharing a trained table (the output
head, an encoder-decoder's other input embeddings) computes with its trained rows (unless listed itself), as in PEFT.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from peftkit.errors import ConfigError
from peftkit.layers.base import AdapterLayer
from peftkit.layers.wrap import replace_module
from peftkit.methods.trainable_tokens.method import TokenFacts, input_embedding_name
from peftkit.methods.trainable_tokens.tying import tied_modules
from peftkit.methods.trainable_tokens.wrapper import TiedTokensWrapper, TrainableTokensWrapper


def token_targets(indices: Sequence[int] | Mapping[str, Sequence[int]], model: nn.Module) -> dict[str, list[int]]:
    """Full module name -> token ids, from a ``trainable_token_indices`` value.

    Raises:
        ConfigError: a key names no module, or names a module that is not an embedding.
    """
    wanted = dict(indices) if isinstance(indices, Mapping) else {input_embedding_name(model): list(indices)}
    found: dict[str, list[int]] = {}
    names = [name for name, _ in model.named_modules()]
    for key, ids in wanted.items():
        matches = [n for n in names if (n == key or n.endswith("." + key)) and ".token_adapter" not in n]
        if not matches:
            raise ConfigError(f"trainable_token_indices names {key!r}, but the model has no module of that name.")
        for name in matches:
            module = model.get_submodule(name)
            base = module.token_adapter.get_base_layer() if isinstance(module, TrainableTokensWrapper) else module
            if not isinstance(base, (nn.Embedding, nn.Linear)) or isinstance(module, TiedTokensWrapper):
                raise ConfigError(f"trainable_token_indices: {name} is a {type(base).__name__}, not an embedding.")
            if isinstance(module, AdapterLayer) and not isinstance(module, TrainableTokensWrapper):
                raise ConfigError(
                    f"trainable_token_indices: {name} is adapted by LoRA already; train one or the other."
                )
            found[name] = list(ids)
    return found


def inject_token_adapters(config: object, model: nn.Module, adapter: str) -> None:
    """Give ``adapter`` its trainable token rows (nothing when ``config.trainable_token_indices`` is unset).

    Raises:
        ConfigError: see :func:`token_targets`, or a token id outside its table (nothing is changed then).
    """
    indices = getattr(config, "trainable_token_indices", None)
    if indices is None:
        return
    saved = set(getattr(config, "modules_to_save", None) or ())
    both = sorted(saved.intersection(indices) if isinstance(indices, Mapping) else ())
    if both:
        raise ConfigError(
            f"{both} are in modules_to_save (trained in full) and in trainable_token_indices; keep them in one."
        )
    targets = token_targets(indices, model)
    for name, ids in targets.items():
        table: Any = model.get_submodule(name)
        size = int(table.weight.shape[0])  # a wrapper reports its base's weight
        if max(ids) >= size:
            raise ConfigError(f"trainable_token_indices: token id {max(ids)} is outside {name}'s {size} rows.")
    for name, ids in targets.items():
        module = model.get_submodule(name)
        if not isinstance(module, TrainableTokensWrapper):
            module = TrainableTokensWrapper(module)
            replace_module(model, name, module)
        module.update_layer(adapter, TokenFacts(tuple(ids), True))
    _tie_head(model, adapter, set(targets))


def _tie_head(model: nn.Module, adapter: str, targeted: set[str]) -> None:
    """Every module tied to a targeted table (the output head, an encoder-decoder's other input embeddings)
    computes with its rows, unless it is listed itself or adapted by LoRA."""
    for source_name in sorted(targeted):
        source = model.get_submodule(source_name)
        if not isinstance(source, TrainableTokensWrapper) or not source.holds(adapter):
            continue
        for name, module in list(tied_modules(model, source)):
            if name in targeted or (isinstance(module, AdapterLayer) and not isinstance(module, TiedTokensWrapper)):
                continue  # its own rows, or LoRA adapts it
            if not isinstance(module, TiedTokensWrapper):
                module = TiedTokensWrapper(module)
                replace_module(model, name, module)
            module.tie_to(source, adapter)
