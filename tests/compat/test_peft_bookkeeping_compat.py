"""PEFT's bookkeeping that user code and PEFT's own tests read: the ``peft_version`` a config records (and its
development-release form), and ``PeftModel.has_active_enabled_adapter`` through nested ``disable_adapter``
blocks -- each against the reference peft 0.21.2."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import peft
import peft.config
import pytest
import torch
from tests._tiny import build, build_model

import peftkit
import peftkit.config


def test_default_version_is_the_references(tmp_path: Path) -> None:
    ours, theirs = peftkit.LoraConfig(), peft.LoraConfig()
    assert ours.peft_version == theirs.peft_version == peft.__version__
    ours.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_version"] == peft.__version__


@pytest.mark.parametrize("config", ["LoraConfig", "IA3Config", "PrefixTuningConfig"])
@pytest.mark.parametrize(("version", "commit", "expected"), [
    ("0.17.0", "abc", "0.17.0"),
    ("0.15.0.dev7", "abcdef012345", "0.15.0.dev7@abcdef012345"),
    ("0.15.0.dev7", None, "0.15.0.dev7@UNKNOWN"),
])  # fmt: skip
def test_version_stamp_matches_reference(
    config: str, version: str, commit: str | None, expected: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    stamps = {}
    for lib, module in ((peft, peft.config), (peftkit, peftkit.config)):
        monkeypatch.setattr(module, "__version__", version)
        monkeypatch.setattr(module, "_get_commit_hash", lambda package, commit=commit: commit)
        made = getattr(lib, config)()
        made.save_pretrained(tmp_path / lib.__name__)
        monkeypatch.setattr(module, "__version__", "9.9.9")  # a load keeps the file's version, not the current one
        stamps[lib.__name__] = (made.peft_version, lib.PeftConfig.from_pretrained(tmp_path / lib.__name__).peft_version)
    assert stamps["peftkit"] == stamps["peft"] == (expected, expected)


def test_commit_lookup_failure_warns_and_records_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(package: str) -> str:
        raise OSError("unreadable metadata")

    monkeypatch.setattr(peftkit.config, "__version__", "0.15.0.dev7")
    monkeypatch.setattr(peftkit.config, "_get_commit_hash", broken)
    with pytest.warns(UserWarning, match="unreadable metadata"):
        config = peftkit.LoraConfig()
    assert config.peft_version == "0.15.0.dev7@UNKNOWN"


def test_commit_hash_of_a_missing_distribution_is_none() -> None:
    assert peftkit.config._get_commit_hash("no-such-distribution-installed") is None


def _models(lib: ModuleType, prompt: bool) -> Any:
    if prompt:
        return lib.get_peft_model(build("llama"), lib.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))
    return lib.get_peft_model(build_model("llama"), lib.LoraConfig(target_modules=["q_proj"]))


@pytest.mark.parametrize("prompt", [False, True], ids=["lora", "prompt_tuning"])
def test_has_active_enabled_adapter_matches_reference(prompt: bool) -> None:
    seen: dict[str, list[bool]] = {}
    for lib in (peft, peftkit):
        model, states = _models(lib, prompt), []
        states.append(model.has_active_enabled_adapter)
        with model.disable_adapter():
            states.append(model.has_active_enabled_adapter)
            with model.disable_adapter():
                states.append(model.has_active_enabled_adapter)
            states.append(model.has_active_enabled_adapter)
        states.append(model.has_active_enabled_adapter)
        seen[lib.__name__] = states
    assert seen["peftkit"] == seen["peft"] == [True, False, False, False, True]


@pytest.mark.parametrize("config", ["LoraConfig", "IA3Config", "PromptTuningConfig", "PeftConfig"])
@pytest.mark.parametrize(
    ("content", "outcome"),
    [
        ({"foo": "bar", "baz": 123}, "refused"),  # not a PEFT config at all
        ({"inference_mode": False}, "loaded"),  # known keys only: missing fields take defaults
        ({"peft_type": "LORA", "r": 4, "future_field": 1}, "loaded"),  # a newer PEFT's file: the key is dropped
    ],
)
def test_config_file_without_peft_type_as_in_reference(
    config: str, content: dict[str, Any], outcome: str, tmp_path: Path
) -> None:
    if config != "LoraConfig" and "peft_type" in content:
        pytest.skip("a LoRA file loads only through LoraConfig or PeftConfig")
    (tmp_path / "adapter_config.json").write_text(json.dumps(content))
    seen = {}
    for lib in (peft, peftkit):
        try:
            loaded = getattr(lib, config).from_pretrained(tmp_path)
            seen[lib.__name__] = ("loaded", type(loaded).__name__)
        except TypeError as error:
            seen[lib.__name__] = ("refused", type(error).__mro__[1].__name__ if lib is peftkit else "")
    assert seen["peftkit"][0] == seen["peft"][0] == outcome
    if outcome == "loaded":
        assert seen["peftkit"][1] == seen["peft"][1]
    else:
        assert seen["peftkit"][1] == "ConfigError"  # also a peftkit ConfigError (a ValueError)


def test_empty_token_indices_is_a_config_and_is_refused_at_injection(tmp_path: Path) -> None:
    for lib in (peft, peftkit):  # PEFT's default: a config may name its tokens later
        config = lib.TrainableTokensConfig(target_modules=["embed_tokens"], token_indices=[])
        config.save_pretrained(tmp_path / lib.__name__)
        assert lib.PeftConfig.from_pretrained(tmp_path / lib.__name__).token_indices == []
    model = build_model("llama")  # (the reference injects it, then its first forward fails inside torch)
    with pytest.raises(peftkit.ConfigError, match="token_indices is empty"):
        peftkit.get_peft_model(model, peftkit.TrainableTokensConfig(token_indices=[]))
    assert type(model.model.embed_tokens) is torch.nn.Embedding  # nothing was injected


@pytest.mark.parametrize("config", ["LoraConfig", "IA3Config", "PromptTuningConfig"])
def test_runtime_config_in_a_file_is_ignored_as_in_reference(config: str, tmp_path: Path) -> None:
    for lib in (peft, peftkit):
        made = getattr(lib, config)(task_type="CAUSAL_LM")
        made.save_pretrained(tmp_path)
        data = json.loads((tmp_path / "adapter_config.json").read_text())
        (tmp_path / "adapter_config.json").write_text(json.dumps({**data, "runtime_config": {"x": True}}))
        assert lib.PeftConfig.from_json_file(tmp_path / "adapter_config.json") == made.to_dict()


def test_disable_adapter_with_partly_disabled_layers_as_in_reference() -> None:
    for lib in (peft, peftkit):
        model = lib.get_peft_model(build_model("llama"), lib.LoraConfig(target_modules=["q_proj", "v_proj"]))
        layers = [m for m in model.modules() if isinstance(m, lib.tuners.tuners_utils.BaseTunerLayer)]
        with warnings.catch_warnings(record=True) as caught:  # a uniform state: no warning
            warnings.simplefilter("always")
            with model.disable_adapter():
                pass
        assert not [w for w in caught if "disabled" in str(w.message) or "switched off" in str(w.message)]
        layers[0].enable_adapters(False)
        with pytest.warns(UserWarning), model.disable_adapter():
            assert all(layer.disable_adapters for layer in layers)
        assert not any(layer.disable_adapters for layer in layers)  # both libraries switch every layer on
