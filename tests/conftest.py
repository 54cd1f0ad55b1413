"""Fixtures and markers shared by the test directories.

* ``unchanged`` checks that a failed operation left a model as it was.
* ``@pytest.mark.reference_peft``: the test compares against the reference ``peft`` driving transformers (its
  adapter methods, or its prompt methods feeding transformers' forward and ``generate``). It runs only where the
  installed peft satisfies transformers' own minimum (``MIN_PEFT_VERSION``), read from transformers, and is
  skipped with that reason elsewhere (e.g. the newest environment, before a peft release catches up).
"""

from __future__ import annotations

import functools
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import pytest
import torch
from torch import nn


@functools.cache
def reference_peft_gap() -> str | None:
    """Why the reference peft cannot serve as the oracle next to the installed transformers; ``None`` if it can."""
    import transformers
    from packaging.version import Version
    from transformers.integrations import peft as transformers_peft

    try:
        installed = version("peft")
    except PackageNotFoundError:
        return "the reference peft is not installed"
    minimum = getattr(transformers_peft, "MIN_PEFT_VERSION", None)
    if minimum is not None and Version(installed) < Version(minimum):
        return (
            f"transformers {transformers.__version__} requires peft >= {minimum} "
            f"(transformers.integrations.peft.MIN_PEFT_VERSION); peft {installed} is installed"
        )
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "reference_peft: compares against peft inside transformers; needs transformers' minimum peft"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("reference_peft") is not None and (gap := reference_peft_gap()) is not None:
        pytest.skip(f"reference peft unusable here: {gap}")


def _snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "types": [(name, type(module)) for name, module in model.named_modules()],
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "grads": {name: p.requires_grad for name, p in model.named_parameters()},
        "configs": sorted(getattr(model, "peft_config", {}) or {}),
        "active": getattr(model, "active_adapter", None) if hasattr(model, "peft_config") else None,
    }


@pytest.fixture
def unchanged() -> Any:
    """``check = unchanged(model)`` snapshots ``model``; ``check()`` asserts it is exactly as it was."""

    def take(model: nn.Module) -> Any:
        before = _snapshot(model)

        def check() -> None:
            after = _snapshot(model)
            assert after["types"] == before["types"]
            assert after["state"].keys() == before["state"].keys()
            for key, tensor in before["state"].items():
                assert torch.equal(after["state"][key], tensor), key
            assert after["grads"] == before["grads"]
            assert after["configs"] == before["configs"]
            assert after["active"] == before["active"]

        return check

    return take
