"""LoRA-GA's gradient estimation (Wang et al., 2024, "LoRA-GA: Low-Rank Adaptation with Gradient Approximation",
arXiv:2407.05000), PEFT's ``preprocess_loraga``.

LoRA-GA starts ``B A`` along the full fine-tuning gradient of each weight. Before ``get_peft_model``:

    preprocess_loraga(model, lora_config, train_step)   # runs train_step: forward + backward over a few batches
    model = get_peft_model(model, lora_config)          # A, B from each weight's gradient (loraga_init)

``train_step`` is the user's: it runs forward and ``loss.backward()`` as often as it likes. Only the target weights
(``nn.Linear`` / ``Conv1D`` modules that ``lora_config`` targets) require a gradient meanwhile; each target's
gradient, accumulated in ``weight.grad`` and divided by the number of backward passes through the module, is left
on it as ``_peft_loraga_grad (out, in)`` (``(in, out)`` for ``Conv1D``, like its weight) for the LoRA layer to read.
The model's ``requires_grad`` flags, ``.grad`` tensors and train/eval mode are restored afterwards, also when
``train_step`` raises.

``cache_file``: a ``torch.save`` file of ``{"<module name>._peft_loraga_grad": tensor}`` (the reference's layout):
read instead of running ``train_step`` when it exists and is not empty, else written after the estimation.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftkit.defaults import default_lora_targets
from peftkit.errors import CheckpointError, ConfigError
from peftkit.methods.lora.config import LoraConfig
from peftkit.methods.lora.loraga_init import GRAD_ATTR
from peftkit.quant.base import backend_for
from peftkit.targeting import all_linear_names, in_selected_layers, name_matches

__all__ = ["preprocess_loraga"]

#: The layers LoRA-GA initialises from a gradient (others get ``init_lora_weights=True``'s factors).
GRADIENT_LAYERS = (nn.Linear, Conv1D)


def _targets(model: nn.Module, config: LoraConfig) -> str | set[str] | list[str]:
    targets = config.target_modules
    if targets is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        targets = default_lora_targets(model_type)
        if targets is None:
            raise ConfigError(
                f"LoraConfig.target_modules is not set and peftkit knows no default targets for model type "
                f"{model_type!r}; set target_modules."
            )
    if targets == "all-linear":
        targets = all_linear_names(model, GRADIENT_LAYERS)
    return targets


def gradient_targets(model: nn.Module, config: LoraConfig) -> Iterator[tuple[str, nn.Module]]:
    """``(name, module)`` of each ``nn.Linear`` / ``Conv1D`` that ``config`` targets, in model order (other
    targeted layer types are skipped: LoRA-GA initialises them as ``init_lora_weights=True`` does).

    Raises:
        ConfigError: no ``target_modules`` and no default for the model's type.
    """
    targets = _targets(model, config)
    for name, module in model.named_modules():
        if not name or not isinstance(module, GRADIENT_LAYERS) or not name_matches(name, targets):
            continue
        if name_matches(name, config.exclude_modules):
            continue
        if in_selected_layers(name, config.layers_to_transform, config.layers_pattern):
            yield name, module


@torch.no_grad()
def preprocess_loraga(
    model: nn.Module,
    lora_config: LoraConfig,
    train_step: Callable[[], None],
    cache_file: str | os.PathLike | None = None,
) -> None:
    """Estimate each target weight's gradient by running ``train_step`` and attach it for LoRA-GA's initialisation
    (see the module docstring). ``lora_config`` is not changed.

    Args:
        model: The base model, before ``get_peft_model``.
        lora_config: The ``LoraConfig`` (with ``lora_ga_config`` set) that ``get_peft_model`` will get.
        train_step: Runs forward and backward passes; takes no arguments.
        cache_file: Where gradients are read from (when the file exists and is not empty) or written to.

    Raises:
        ConfigError: ``lora_config.lora_ga_config`` is not set; no ``target_modules`` can be found; a target layer
            is quantized (its weight has no full-precision gradient); or no target is an ``nn.Linear`` / ``Conv1D``.
        CheckpointError: ``cache_file`` lacks a target's gradient.
    """
    if lora_config.lora_ga_config is None:
        raise ConfigError(
            "preprocess_loraga needs LoRA-GA's options: build the LoraConfig with init_lora_weights='lora_ga' and "
            "lora_ga_config=LoraGAConfig(...)."
        )
    targets = list(gradient_targets(model, lora_config))
    quantized = [name for name, module in targets if backend_for(module) is not None or hasattr(module, "quant_state")]
    if quantized:
        raise ConfigError(
            f"LoRA-GA needs full-precision gradients, but these target layers are quantized: {', '.join(quantized)}. "
            "Run preprocess_loraga and get_peft_model on the unquantized model, or use another initialisation."
        )
    if cache_file is not None and os.path.isfile(cache_file) and os.path.getsize(cache_file) > 0:
        _read_cache(targets, cache_file)
        return
    if not targets:
        raise ConfigError(
            "LoRA-GA estimates gradients of nn.Linear and Conv1D weights, and target_modules names none of those "
            "in this model; target at least one such layer."
        )
    estimate_gradients(model, targets, train_step)
    if cache_file is not None:
        _write_cache(targets, cache_file)


def estimate_gradients(model: nn.Module, targets: list[tuple[str, nn.Module]], train_step: Callable[[], None]) -> None:
    """Run ``train_step`` in train mode with only the targets' weights requiring a gradient; leave on each target
    its weight's gradient divided by the number of backward passes through it (none: no gradient attached).
    The model's flags, gradients and mode are restored afterwards, also when ``train_step`` raises."""
    was_training = model.training
    flags = {param: param.requires_grad for param in model.parameters()}
    weights = {module: _weight(module) for _, module in targets}
    kept_grads = {module: weight.grad for module, weight in weights.items()}
    counts = dict.fromkeys(kept_grads, 0)

    def watch(module: nn.Module, inputs: Any, output: Any) -> None:
        """Count the backward passes through ``module``: a hook on its output's gradient (the reference counts
        with a full backward hook, which fires as often but warns when the inputs need no gradient)."""
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(lambda grad: counts.__setitem__(module, counts[module] + 1))

    hooks = [module.register_forward_hook(watch) for module in kept_grads]
    try:
        for param in flags:
            param.requires_grad_(False)
        for module in kept_grads:
            weights[module].grad = None
            weights[module].requires_grad_(True)
        model.train()
        with torch.enable_grad():
            train_step()
        for module, n in counts.items():
            grad = weights[module].grad
            if n > 0 and grad is not None:
                setattr(module, GRAD_ATTR, grad.detach() / n)
    finally:
        for hook in hooks:
            hook.remove()
        for param, flag in flags.items():
            param.requires_grad_(flag)
        for module, kept in kept_grads.items():
            weights[module].grad = kept
        model.train(was_training)


def _weight(module: nn.Module) -> torch.Tensor:
    weight: torch.Tensor = module.weight  # type: ignore[assignment]  # an nn.Linear / Conv1D weight
    return weight


def _read_cache(targets: list[tuple[str, nn.Module]], cache_file: str | os.PathLike) -> None:
    device = next((_weight(module).device for _, module in targets), torch.device("cpu"))
    cache = torch.load(cache_file, map_location=device, weights_only=True)
    missing = [f"{name}.{GRAD_ATTR}" for name, _ in targets if f"{name}.{GRAD_ATTR}" not in cache]
    if missing:
        raise CheckpointError(
            f"The LoRA-GA gradient cache {os.fspath(cache_file)!s} lacks {', '.join(missing)}: it was written for "
            "another model or other target_modules. Delete it to estimate the gradients again."
        )
    for name, module in targets:
        setattr(module, GRAD_ATTR, cache[f"{name}.{GRAD_ATTR}"])


def _write_cache(targets: list[tuple[str, nn.Module]], cache_file: str | os.PathLike) -> None:
    """Write the gradients atomically (a temporary file in the same folder, then a rename)."""
    cache = {
        f"{name}.{GRAD_ATTR}": getattr(module, GRAD_ATTR) for name, module in targets if hasattr(module, GRAD_ATTR)
    }
    folder = os.path.dirname(os.path.abspath(cache_file))
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            torch.save(cache, out)
        os.replace(tmp, cache_file)
    except BaseException:
        os.unlink(tmp)
        raise
