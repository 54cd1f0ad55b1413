"""PEFT's ``peft.import_utils`` path: facts about the installed libraries that PEFT code (its examples and test
suites) branches on. peftkit's own code chooses behaviour by what the libraries offer, never by these."""

from __future__ import annotations

import importlib
import importlib.util
from functools import cache

import torch
import transformers
from packaging.version import Version

#: Whether the installed transformers is a 5.x release or later (PEFT's ``is_transformers_ge_v5``).
is_transformers_ge_v5: bool = Version(transformers.__version__) >= Version("5.0.0.dev0")


@cache
def _installed(module: str) -> bool:
    """Whether ``module`` can be imported (found on the path; not imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def is_bnb_available() -> bool:
    """Whether bitsandbytes is installed."""
    return _installed("bitsandbytes")


def is_bnb_4bit_available() -> bool:
    """Whether the installed bitsandbytes offers 4-bit layers (``bitsandbytes.nn.Linear4bit``)."""
    return is_bnb_available() and hasattr(importlib.import_module("bitsandbytes.nn"), "Linear4bit")


def is_torchao_available() -> bool:
    """Whether torchao is installed."""
    return _installed("torchao")


def is_diffusers_available() -> bool:
    """Whether diffusers is installed."""
    return _installed("diffusers")


def is_xpu_available(check_device: bool = False) -> bool:
    """Whether torch has an Intel XPU backend with a device (``check_device`` is accepted for PEFT's signature;
    the answer always includes the device check)."""
    xpu = getattr(torch, "xpu", None)
    return xpu is not None and bool(xpu.is_available())


def is_gptqmodel_available() -> bool:
    """Whether GPTQModel is installed."""
    return _installed("gptqmodel")


def is_hqq_available() -> bool:
    """Whether HQQ is installed."""
    return _installed("hqq")


def is_aqlm_available() -> bool:
    """Whether AQLM is installed."""
    return _installed("aqlm")


def is_eetq_available() -> bool:
    """Whether EETQ is installed."""
    return _installed("eetq")


def is_optimum_available() -> bool:
    """Whether optimum is installed."""
    return _installed("optimum")


__all__ = [
    "is_aqlm_available",
    "is_bnb_4bit_available",
    "is_bnb_available",
    "is_diffusers_available",
    "is_eetq_available",
    "is_gptqmodel_available",
    "is_hqq_available",
    "is_optimum_available",
    "is_torchao_available",
    "is_transformers_ge_v5",
    "is_xpu_available",
]
