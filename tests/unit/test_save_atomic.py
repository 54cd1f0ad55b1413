"""Saves are atomic: a save that fails midway leaves the previous adapter files intact and no temp files."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch

import peftkit as peft


def files(directory) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def model(toy):
    return peft.get_peft_model(toy(), peft.LoraConfig(r=2, init_lora_weights=False))


def failing_writer(real):
    """A writer that writes half of the real file, then fails like a full disk."""

    def write(obj, path, *args, **kwargs):
        real(obj, path, *args, **kwargs)
        with open(path, "r+b") as fh:
            fh.truncate(max(1, len(fh.read()) // 2))
        raise OSError(28, "No space left on device")

    return write


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_failed_save_keeps_previous_files(model, tmp_path, monkeypatch, safe: bool) -> None:
    model.save_pretrained(tmp_path, safe_serialization=safe)
    before = files(tmp_path)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.add_(1.0)
    if safe:
        monkeypatch.setattr(safetensors.torch, "save_file", failing_writer(safetensors.torch.save_file))
    else:
        monkeypatch.setattr(torch, "save", failing_writer(torch.save))
    with pytest.raises(OSError, match="No space left"):
        model.save_pretrained(tmp_path, safe_serialization=safe)
    assert files(tmp_path) == before


def test_failed_first_save_leaves_no_weights_file(model, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(safetensors.torch, "save_file", failing_writer(safetensors.torch.save_file))
    with pytest.raises(OSError):
        model.save_pretrained(tmp_path)
    assert not [name for name in files(tmp_path) if name.endswith((".safetensors", ".bin")) or ".tmp" in name]


def test_successful_save_leaves_no_temp_files(model, tmp_path) -> None:
    model.add_adapter("other", peft.LoraConfig(r=2))
    model.save_pretrained(tmp_path)
    assert sorted(files(tmp_path)) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "other/adapter_config.json",
        "other/adapter_model.safetensors",
    ]


def test_unserialisable_config_fails_before_any_file_changes(model, tmp_path) -> None:
    model.save_pretrained(tmp_path)
    before = files(tmp_path)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.add_(1.0)
    model.peft_config["default"].revision = torch.float16  # not JSON-serialisable
    with pytest.raises(TypeError, match="JSON serializable"):
        model.save_pretrained(tmp_path)
    assert files(tmp_path) == before
