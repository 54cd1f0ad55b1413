"""PEFT's ``peft.utils.other`` import path for the FSDP helpers (implemented in :mod:`peftkit.integrations.fsdp`)."""

from peftkit.integrations.fsdp import fsdp_auto_wrap_policy

__all__ = ["fsdp_auto_wrap_policy"]
