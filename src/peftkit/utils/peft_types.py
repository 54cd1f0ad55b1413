"""PEFT's ``peft.utils.peft_types`` import path: the on-disk vocabulary (:mod:`peftkit.types`)."""

from peftkit.types import PeftType, TaskType

__all__ = ["PeftType", "TaskType"]
