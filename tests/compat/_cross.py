"""Cross-library checks shared by the IA3 and AdaLoRA compatibility tests.

An :class:`Adapter` says how to build one adapter (config class name and fields, model kind, adapter name,
optional training before saving). :func:`assert_cross_load` saves it with one library and loads it with
the other; :func:`saved_files` reads a saved directory in a comparable form.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import peft
import pytest
import torch
from safetensors.torch import load_file
from tests._tiny import build_model, model_inputs, model_output, randomise_adapter

import peftkit

LIBS: dict[str, ModuleType] = {"peft": peft, "peftkit": peftkit}
SET_FIELDS = ("target_modules", "exclude_modules", "feedforward_modules", "modules_to_save", "target_parameters")
ATOL = 1e-5
# peft's own notices on load that do not concern the files: its LoRA rank_pattern check does not know
# AdaLoRA's "<module>.lora_E" keys and warns even for adapters that peft itself saved.
PEFT_LOAD_NOTICES = ("The following rank_pattern keys did not match any targeted module",)


@dataclass(frozen=True)
class Adapter:
    """One adapter to build with either library.

    Attributes:
        id: Test id.
        config_class: Name of the config class in both libraries (``"IA3Config"``).
        fields: Its keyword arguments.
        model: Model kind for :func:`build_model`.
        name: Adapter name (non-default names are saved in a subfolder).
        train: ``(model, lib) -> None`` run after randomising and before saving, or ``None``.
    """

    id: str
    config_class: str
    fields: dict[str, Any] = field(default_factory=dict)
    model: str = "llama"
    name: str = "default"
    train: Callable[[Any, ModuleType], object] | None = None

    def create(self, lib: ModuleType) -> Any:
        """Build the adapter with ``lib`` on a fresh base and make every adapter tensor non-trivial."""
        config = getattr(lib, self.config_class)(**self.fields)
        model = lib.get_peft_model(build_model(self.model), config, adapter_name=self.name)
        randomise_adapter(model)
        if self.train is not None:
            self.train(model, lib)
        return model.eval()

    def load(self, lib: ModuleType, directory: Path, **kwargs: Any) -> tuple[Any, list[str]]:
        """Load the saved adapter with ``lib``; also return the messages of the warnings raised."""
        path = directory if self.name == "default" else directory / self.name
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = lib.PeftModel.from_pretrained(build_model(self.model), path, adapter_name=self.name, **kwargs)
        relevant = [str(w.message) for w in caught if not issubclass(w.category, (DeprecationWarning, FutureWarning))]
        return model, [m for m in relevant if not m.startswith(PEFT_LOAD_NOTICES)]


def assert_cross_load(adapter: Adapter, source: str, target: str, tmp_path: Path) -> None:
    """``source`` saves, ``target`` loads without warnings: same outputs, unmerged and merged."""
    saved = adapter.create(LIBS[source])
    saved.save_pretrained(tmp_path)
    loaded, messages = adapter.load(LIBS[target], tmp_path)
    assert messages == []
    inputs = model_inputs(adapter.model)
    expected = model_output(saved, inputs)
    assert not torch.allclose(expected, model_output(build_model(adapter.model), inputs), atol=1e-3)
    torch.testing.assert_close(model_output(loaded, inputs), expected, atol=ATOL, rtol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft warns that unmerging IA3 is inexact
        merged = model_output(loaded.merge_and_unload(), inputs)
    torch.testing.assert_close(merged, expected, atol=ATOL, rtol=0)


def saved_files(directory: Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """``(config with set-valued fields as sets, {tensor key: shape})`` of a saved adapter directory."""
    config = json.loads((directory / "adapter_config.json").read_text())
    config = {k: set(v) if k in SET_FIELDS and isinstance(v, list) else v for k, v in config.items()}
    return config, {k: tuple(v.shape) for k, v in load_file(directory / "adapter_model.safetensors").items()}


def printed_parameters(model: Any, capsys: Any) -> str:
    """What ``print_trainable_parameters`` prints."""
    capsys.readouterr()
    model.print_trainable_parameters()
    return capsys.readouterr().out


def assert_same_files_and_counts(adapter: Adapter, tmp_path: Path, capsys: Any) -> None:
    """Both libraries, building the same adapter, save the same config JSON and tensor keys / shapes and
    print the same trainable-parameter line."""
    results = {}
    for lib_name, lib in LIBS.items():
        model = adapter.create(lib)
        model.save_pretrained(tmp_path / lib_name)
        directory = tmp_path / lib_name / ("" if adapter.name == "default" else adapter.name)
        results[lib_name] = (*saved_files(directory), printed_parameters(model, capsys))
    assert results["peftkit"] == results["peft"]


def compat_tests(cross: list[Adapter], files: list[Adapter]) -> tuple[Callable[..., None], Callable[..., None]]:
    """A method's two table-driven tests: each adapter of ``cross`` saved by either library and loaded by the
    other; each of ``files`` built by both, same files and counts. Bind them to ``test_*`` names in the test
    module so that pytest collects them there."""

    @pytest.mark.parametrize(
        ("source", "target"), [("peft", "peftkit"), ("peftkit", "peft")], ids=["to_peftkit", "to_peft"]
    )
    @pytest.mark.parametrize("adapter", cross, ids=lambda a: a.id)
    def cross_load(adapter: Adapter, source: str, target: str, tmp_path: Path) -> None:
        assert_cross_load(adapter, source, target, tmp_path)

    @pytest.mark.parametrize("adapter", files, ids=lambda a: a.id)
    def same_files(adapter: Adapter, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
        assert_same_files_and_counts(adapter, tmp_path, capsys)

    return cross_load, same_files
