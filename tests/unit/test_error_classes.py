"""User errors are peftkit's exceptions (``peftkit.errors``), which stay ``ValueError`` / ``TypeError``
subclasses so that code written against PEFT catches them where it catches PEFT's."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

import peftkit
from peftkit import errors

SRC = Path(__file__).resolve().parents[2] / "src" / "peftkit"
BUILTINS = {"ValueError", "TypeError", "RuntimeError", "KeyError", "IndexError", "Exception"}
#: Builtin raises that are not user errors, with the reason.
NOT_USER_ERRORS = {
    "cli/parser.py": "a command function without help text is a bug in peftkit's command table",
}


def test_no_bare_builtin_exception_is_raised_in_src() -> None:
    bare = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                func = node.exc.func
                allowed = str(path.relative_to(SRC)) in NOT_USER_ERRORS
                if isinstance(func, ast.Name) and func.id in BUILTINS and not allowed:
                    bare.append(f"{path.relative_to(SRC)}:{node.lineno} raises {func.id}")
    assert not bare, "raise a class from peftkit.errors instead:\n" + "\n".join(bare)


def test_error_classes_keep_the_builtin_bases_peft_code_catches() -> None:
    for name in ("ConfigError", "TargetingError", "AdapterNameError", "CheckpointError", "UsageError"):
        assert issubclass(getattr(errors, name), ValueError) and issubclass(getattr(errors, name), errors.PeftkitError)
    assert issubclass(errors.ArgumentTypeError, TypeError)
    assert issubclass(errors.HotswapError, ValueError) and issubclass(errors.HotswapError, RuntimeError)


def test_user_errors_raise_them() -> None:
    torch.manual_seed(0)
    model = peftkit.get_peft_model(nn.Sequential(nn.Linear(3, 3)), peftkit.LoraConfig(target_modules=["0"]))
    with pytest.raises(peftkit.UsageError, match="already is a PeftModel"):
        peftkit.get_peft_model(model, peftkit.LoraConfig(target_modules=["0"]))
    model.train()
    with pytest.raises(ValueError, match="for inference"):  # PEFT code catches ValueError here
        model(torch.randn(2, 3), adapter_names=["default", "default"])
    model.eval()
    with pytest.raises(peftkit.UsageError, match="adapter_names has 1 entries"):
        model(torch.randn(2, 3), adapter_names=["default"])
