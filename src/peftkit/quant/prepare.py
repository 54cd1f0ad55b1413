"""``prepare_model_for_kbit_training``: the usual preparation of a quantized model before adding adapters
(QLoRA: Dettmers et al., 2023, arXiv:2305.14314, section 3).

It does what PEFT's function of the same name documents:

1. freeze every parameter of the base model;
2. upcast the float16 / bfloat16 parameters that are not quantized (layer norms, embeddings, the head) to
   float32, for stable training (quantized weights keep their packed storage), except for quantization
   methods whose kernels read those tensors in the model's dtype (GPTQ, AQLM, EETQ, HQQ, torchao);
3. with gradient checkpointing: make the input embeddings' output require grad (so that checkpointed blocks
   whose own inputs are frozen still propagate gradients to the adapters inside them, which reentrant
   checkpointing needs) and turn on the model's gradient checkpointing with ``gradient_checkpointing_kwargs``.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from peftkit.errors import UnsupportedError

_HALF = (torch.float16, torch.bfloat16)
#: Quantization methods whose kernels take the model's float tensors in the model's dtype: not upcast (as PEFT).
KEEP_DTYPE_METHODS = ("gptq", "aqlm", "eetq", "hqq", "torchao")


def is_loaded_in_kbit(model: nn.Module) -> bool:
    """Whether transformers loaded ``model`` quantized (bitsandbytes 4/8-bit, torchao, GPTQ, ...)."""
    return bool(
        getattr(model, "is_loaded_in_8bit", False)
        or getattr(model, "is_loaded_in_4bit", False)
        or getattr(model, "hf_quantizer", None) is not None
        or getattr(model, "is_quantized", False)
    )


def check_trainable_quantization(model: nn.Module) -> None:
    """Raise when ``model``'s quantization method cannot be fine-tuned (transformers' ``hf_quantizer``
    says so), before any time is spent training it.

    Raises:
        UnsupportedError: The quantizer reports ``is_trainable = False``.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None or getattr(quantizer, "is_trainable", True):
        return
    config = getattr(quantizer, "quantization_config", None)
    method = getattr(config, "quant_method", type(quantizer).__name__)
    raise UnsupportedError(
        f"This model is quantized with {method!s} ({type(config).__name__}), which cannot be trained: gradients "
        "cannot flow through its quantized layers. Load the base with a trainable quantization (bitsandbytes "
        "4-bit or 8-bit, torchao int8 weight-only) or without quantization."
    )


def _upcast_half_parameters(model: nn.Module) -> None:
    """Cast every non-quantized float16 / bfloat16 parameter to float32 in place (``param.data``)."""
    for param in model.parameters():
        # Quantized parameters (bitsandbytes' Params4bit / Int8Params, torchao subclasses) are subclasses.
        if type(param) is nn.Parameter and param.dtype in _HALF:
            param.data = param.data.to(torch.float32)


def _make_inputs_require_grad(model: nn.Module) -> None:
    """The input embeddings' output requires grad (transformers' ``enable_input_require_grads`` when present)."""
    enable = getattr(model, "enable_input_require_grads", None)
    if callable(enable):
        enable()
        return

    def require_grad(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        output.requires_grad_(True)

    model.get_input_embeddings().register_forward_hook(require_grad)  # type: ignore[operator]


def inputs_require_grad_unless_quantized(model: nn.Module) -> nn.Module:
    """Make ``model``'s input embeddings' output require grad, so that reentrant activation checkpointing reaches
    the adapters of a frozen model; a model loaded quantized (``is_loaded_in_8bit``, ``is_loaded_in_4bit``,
    ``is_quantized``) is left as it is, as PEFT's ``prepare_model_for_gradient_checkpointing`` does. Returns
    ``model``."""
    if not any(getattr(model, flag, False) for flag in ("is_loaded_in_8bit", "is_loaded_in_4bit", "is_quantized")):
        _make_inputs_require_grad(model)
    return model


def _enable_checkpointing(model: nn.Module, kwargs: dict[str, Any] | None) -> None:
    """Turn on the model's activation checkpointing through the method its transformers offers (newer versions
    name it ``activation_checkpointing_enable`` and deprecate ``gradient_checkpointing_enable``)."""
    for method, keyword in (
        ("activation_checkpointing_enable", "activation_checkpointing_kwargs"),
        ("gradient_checkpointing_enable", "gradient_checkpointing_kwargs"),
    ):
        enable = getattr(model, method, None)
        if callable(enable):
            if keyword in inspect.signature(enable).parameters:
                enable(**{keyword: kwargs})
            else:
                enable()
            return


def prepare_model_for_kbit_training(
    model: nn.Module,
    use_gradient_checkpointing: bool = True,
    gradient_checkpointing_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """Freeze ``model``, upcast its non-quantized half-precision parameters to float32 and (optionally) enable
    gradient checkpointing, as a quantized model needs before adapters are added and trained.

    Args:
        model: A transformers model, usually loaded with ``quantization_config=BitsAndBytesConfig(...)``.
        use_gradient_checkpointing: Turn on the model's gradient checkpointing (saves activation memory at the
            cost of one more forward per block).
        gradient_checkpointing_kwargs: Passed to the model's checkpointing switch (e.g.
            ``{"use_reentrant": False}``); with reentrant checkpointing (the default when ``use_reentrant`` is
            not given as ``False``) the input embeddings' output is made to require grad.

    Returns:
        ``model``, modified in place.

    Raises:
        UnsupportedError: The model's quantization cannot be trained (see :func:`check_trainable_quantization`).
    """
    check_trainable_quantization(model)
    for param in model.parameters():
        param.requires_grad_(False)
    quantizer = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", "")
    method = str(getattr(method, "value", method))  # transformers' QuantizationMethod is a str enum
    if not any(name in method for name in KEEP_DTYPE_METHODS):
        _upcast_half_parameters(model)
    if not (is_loaded_in_kbit(model) and use_gradient_checkpointing):
        return model
    kwargs = dict(gradient_checkpointing_kwargs or {})
    if kwargs.get("use_reentrant", True):
        _make_inputs_require_grad(model)
    _enable_checkpointing(model, kwargs or None)
    return model


def cast_mixed_precision_params(model: nn.Module, dtype: torch.dtype) -> None:
    """Frozen parameters to ``dtype`` (``torch.float16`` / ``torch.bfloat16``), trainable ones to float32, in place.

    For automatic mixed-precision training: the frozen base costs half the memory while the adapter's weights
    and their optimizer updates stay in full precision. Parameter objects are kept (``param.data`` is replaced),
    so an optimizer built before still holds them.
    """
    for param in model.parameters():
        param.data = param.data.to(torch.float32 if param.requires_grad else dtype)
