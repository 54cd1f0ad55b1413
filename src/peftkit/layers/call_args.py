"""Calls of wrapped modules with keyword arguments only (``linear(input=t)``): finding the main input."""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from torch import nn

from peftkit.errors import ArgumentTypeError


@functools.cache
def _first_parameter(cls: Any) -> str | None:
    params = list(inspect.signature(cls.forward).parameters.values())[1:]  # skip ``self``
    return params[0].name if params and params[0].kind is not inspect.Parameter.VAR_KEYWORD else None


def input_from_kwargs(module: nn.Module, kwargs: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Split the main input (``module.forward``'s first parameter, e.g. ``input`` of ``nn.Linear``) from ``kwargs``.

    Raises:
        ArgumentTypeError: (a ``TypeError``, as calling ``module`` would raise) no keyword argument is the first
            parameter of ``module.forward``.
    """
    name = _first_parameter(type(module))  # type: ignore[arg-type]  # a class is hashable; mypy reads Module.__hash__
    if name is None or name not in kwargs:
        raise ArgumentTypeError(f"{type(module).__name__}.forward() is missing its input argument {name!r}.")
    rest = dict(kwargs)
    return rest.pop(name), rest
