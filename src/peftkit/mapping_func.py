"""PEFT's ``peft.mapping_func`` import path: :func:`get_peft_model` (defined in :mod:`peftkit.mapping`)."""

from peftkit.mapping import get_peft_model

__all__ = ["get_peft_model"]
