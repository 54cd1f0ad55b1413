"""Sharing through the Hugging Face hub, offline: push_to_hub (PeftModel and in-place models) is followed up
to the upload call and must commit exactly the adapter files; loading by hub id goes through
huggingface_hub's cache, pre-filled here, with offline mode on."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
import transformers
from huggingface_hub import constants
from safetensors.torch import load
from tests._tiny import inputs_for, output_of, tiny_llama
from tests.integration._transformers_fixtures import (  # noqa: F401 (fixture)
    lora,
    patched,
)

import peftkit

BASE_ID, ADAPTER_ID = "peftkit-test/tiny-llama", "peftkit-test/tiny-lora"


@pytest.fixture
def hub(monkeypatch) -> list[dict]:
    """Replace the network calls of ``HfApi`` by recorders; returns the list of commits it would make."""
    commits: list[dict] = []

    def create_commit(self, repo_id, operations, commit_message, **kwargs):
        files = {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations}
        commits.append({"repo_id": repo_id, "files": files, "message": commit_message, **kwargs})
        return SimpleNamespace(oid="0" * 40)

    monkeypatch.setattr(
        huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **_: SimpleNamespace(repo_id=repo_id)
    )
    monkeypatch.setattr(huggingface_hub.HfApi, "create_branch", lambda self, repo_id, branch, **_: None)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", create_commit)
    return commits


def check_adapter_files(files: dict[str, bytes], model_state: dict[str, torch.Tensor], base: str | None) -> None:
    assert sorted(files) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads(files["adapter_config.json"])
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == base
    stored = load(files["adapter_model.safetensors"])
    assert stored.keys() == model_state.keys()
    for key, value in model_state.items():
        torch.testing.assert_close(stored[key], value)


def test_push_to_hub_uploads_exactly_the_adapter_files(hub, patched) -> None:  # noqa: F811
    wrapped = peftkit.get_peft_model(tiny_llama(), lora())
    wrapped.add_adapter("other", lora(r=2))
    wrapped.push_to_hub("me/wrapped", commit_message="adapters", revision="dev")
    commit = hub.pop()
    assert (commit["repo_id"], commit["message"], commit["revision"]) == ("me/wrapped", "adapters", "dev")
    top = {k: v for k, v in commit["files"].items() if "/" not in k and k != "README.md"}
    assert b"library_name: peft" in commit["files"]["README.md"]  # the model card, as the reference uploads it
    check_adapter_files(top, wrapped.get_adapter_state_dict("default"), None)
    nested = {k.removeprefix("other/"): v for k, v in commit["files"].items() if k.startswith("other/")}
    check_adapter_files(nested, wrapped.get_adapter_state_dict("other"), None)
    assert len(commit["files"]) == 5

    inplace = tiny_llama()
    inplace.add_adapter(lora(), adapter_name="mine")  # through the opt-in
    inplace.push_to_hub("me/inplace")
    files = hub.pop()["files"]
    state = {f"base_model.model.{k}": v for k, v in inplace.get_adapter_state_dict().items()}
    check_adapter_files(files, state, None)


def fill_cache(cache: Path, repo_id: str, files: dict[str, bytes]) -> None:
    """Lay ``files`` out as huggingface_hub's cache holds a downloaded snapshot of ``repo_id``'s main branch."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    for name, data in files.items():
        path = repo / "snapshots" / commit / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_loading_by_hub_id_goes_through_the_cache(hub, patched, monkeypatch, tmp_path) -> None:  # noqa: F811
    tiny_llama().save_pretrained(tmp_path / "base")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    fill_cache(tmp_path / "cache", BASE_ID, {p.name: p.read_bytes() for p in (tmp_path / "base").iterdir()})
    source = peftkit.get_peft_model(tiny_llama(), lora(task_type=peftkit.TaskType.CAUSAL_LM))
    source.peft_config["default"].base_model_name_or_path = BASE_ID
    source.push_to_hub(ADAPTER_ID)
    fill_cache(tmp_path / "cache", ADAPTER_ID, hub.pop()["files"])  # what was pushed is what gets downloaded

    x = inputs_for(source)
    expected = output_of(source, x)
    inplace = peftkit.enable_adapter_methods(tiny_llama())
    inplace.load_adapter(ADAPTER_ID, adapter_name="hub")
    loaded = [
        peftkit.PeftModel.from_pretrained(tiny_llama(), ADAPTER_ID),
        peftkit.AutoPeftModelForCausalLM.from_pretrained(ADAPTER_ID),
        peftkit.AutoModelForCausalLM.from_pretrained(ADAPTER_ID),
        transformers.AutoModelForCausalLM.from_pretrained(ADAPTER_ID),
        inplace,
    ]
    for model in loaded:
        torch.testing.assert_close(output_of(model, x), expected)
    with pytest.raises(peftkit.ConfigError, match=r"adapter_config\.json"):
        peftkit.PeftModel.from_pretrained(tiny_llama(), "peftkit-test/not-in-cache")
