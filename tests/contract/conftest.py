"""Fixtures of the contract tests: ``case`` runs a test once per row of the case table."""

from __future__ import annotations

import pytest
from tests.contract._cases import CASES, Case


@pytest.fixture(params=CASES, ids=[c.name for c in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    return request.param


@pytest.fixture
def llama_case() -> Case:
    return CASES[0]
