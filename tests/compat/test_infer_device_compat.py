"""``peft.utils.infer_device`` at peftkit's same paths (PEFT's tests call it while their classes are defined)."""

from __future__ import annotations

import peft.utils
import peft.utils.other

import peftkit.utils
import peftkit.utils.other


def test_infer_device_matches_reference() -> None:
    assert peftkit.utils.infer_device() == peft.utils.infer_device()
    assert peftkit.utils.other.infer_device() == peft.utils.other.infer_device()


def test_import_utils_facts_match_reference() -> None:
    import peft.import_utils

    import peftkit.import_utils

    assert peftkit.import_utils.is_transformers_ge_v5 == peft.import_utils.is_transformers_ge_v5
