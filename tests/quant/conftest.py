"""Fixtures of the QLoRA tests: the tiny float32 checkpoint every quantized model is loaded from."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.quant._quant_models import write_tiny_llama

pytest.importorskip("bitsandbytes")
pytest.importorskip("torchao")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
