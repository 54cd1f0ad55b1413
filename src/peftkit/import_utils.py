"""PEFT's ``peft.import_utils`` path: facts about the installed libraries that PEFT code (its examples and test
suites) branches on. peftkit's own code chooses behaviour by what the libraries offer, never by these."""

from __future__ import annotations

import transformers
from packaging.version import Version

#: Whether the installed transformers is a 5.x release or later (PEFT's ``is_transformers_ge_v5``).
is_transformers_ge_v5: bool = Version(transformers.__version__) >= Version("5.0.0.dev0")

__all__ = ["is_transformers_ge_v5"]
