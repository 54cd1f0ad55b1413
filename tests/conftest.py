"""Fixtures shared by the test directories: ``unchanged`` checks that a failed operation left a model as it was."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn


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
