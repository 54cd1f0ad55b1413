"""Fixtures of the contract tests: ``case`` runs a test once per row of the LoRA case table, ``method`` once per
method of the method table (``_methods.py``)."""

from __future__ import annotations

import pytest
from tests.contract._cases import CASES, Case
from tests.contract._methods import LAYER_CASES, METHOD_CASES, MethodCase


@pytest.fixture(params=CASES, ids=[c.name for c in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    return request.param


@pytest.fixture
def llama_case() -> Case:
    return CASES[0]


@pytest.fixture(params=METHOD_CASES, ids=[c.name for c in METHOD_CASES])
def method(request: pytest.FixtureRequest) -> MethodCase:
    return request.param


@pytest.fixture(params=LAYER_CASES, ids=[c.name for c in LAYER_CASES])
def layer_method(request: pytest.FixtureRequest) -> MethodCase:
    """The methods with adapter layers (merging, mixed batches and transformers' ``add_adapter`` apply)."""
    return request.param
