"""Shared setup of the formula-oracle tests: a fixed seed per test, so random adapters are reproducible."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
