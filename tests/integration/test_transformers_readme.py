"""The README's "transformers integration" example runs as written (in a scratch directory)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import peftkit

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## transformers integration\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the section must hold a python example"
    return match.group(1)


def test_readme_example_runs(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "readme_example"}
    try:
        exec(compile(readme_example(), str(README), "exec"), namespace)
    finally:
        peftkit.unpatch_transformers()
    model = namespace["model"]
    assert sorted(model.peft_config) == ["adapter_2", "x"] and model.active_adapters() == ["adapter_2"]
    assert sorted(os.listdir("out")) == ["adapter_config.json", "adapter_model.safetensors"]
    for step in (10, 20):
        files = os.listdir(f"ckpt/checkpoint-{step}")
        assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    assert namespace["trainer"].state.global_step == 20
    assert namespace["model2"].active_adapters() == ["default"] == namespace["model3"].active_adapters()
