"""LoRA compatibility with the reference peft 0.21.2, in both directions, one table of cases.

For each case an adapter with random non-zero weights is created by one library and saved; the other
library loads it on an identical base model and must give the same outputs (and merged outputs where the
case asks). Both libraries' saved files must have the same keys, shapes and config fields, and
``print_trainable_parameters`` must print the same line.
"""

from __future__ import annotations

import json
import warnings
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

ATOL = 1e-5
LIBS = {"peft": peft, "peftkit": peftkit}
# Config fields whose value is a set (order on disk is not meaningful).
SET_FIELDS = ("target_modules", "exclude_modules", "modules_to_save")
# The model card is optional (FORMAT.md) and peftkit does not write one.
IGNORED_FILES = {"README.md"}

# Warnings peft raises while *creating or saving* (never while loading, which is checked): its notice for
# GPT-2 Conv1D, its notice for saved embedding layers, and a false alarm of its ZeRO-3 shard check, which
# takes the 1-D lora_B.bias of lora_bias=True for an ungathered shard.
pytestmark = [
    pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to False:UserWarning"),
    pytest.mark.filterwarnings("ignore:Setting `save_embedding_layers` to `True`:UserWarning"),
    pytest.mark.filterwarnings("ignore:Adapter .* have invalid shape"),
]


@dataclass(frozen=True)
class Case:
    """One compatibility scenario.

    Attributes:
        id: Test id.
        model: Model kind for :func:`build_model`.
        config: ``LoraConfig`` keyword arguments (``init_lora_weights=False`` is always added).
        adapter_name: Name of the first adapter (non-default names are saved in a subfolder).
        second: Config of a second adapter named ``"second"`` saved in the same directory, or ``None``.
        safe: ``safe_serialization`` for ``save_pretrained``.
        merge: Also compare ``merge_and_unload`` outputs.
    """

    id: str
    model: str = "llama"
    config: dict[str, Any] = field(default_factory=dict)
    adapter_name: str = "default"
    second: dict[str, Any] | None = None
    safe: bool = True
    merge: bool = False


QV = {"target_modules": ["q_proj", "v_proj"]}
CASES = [
    Case("plain", merge=True),
    Case("rslora", config={"use_rslora": True, "r": 4, "lora_alpha": 16}),
    Case("dora", config={"use_dora": True}, merge=True),
    Case("bias_all", config={"bias": "all"}),
    Case("bias_lora_only", config={"bias": "lora_only"}),
    Case("lora_bias", config={"lora_bias": True}),
    Case("modules_to_save", config={"modules_to_save": ["lm_head"]}),
    Case("embedding", config={"target_modules": ["embed_tokens"]}),
    Case("conv2d", model="convnet", config={"target_modules": ["conv", "lin"]}),
    Case("gpt2_conv1d", model="gpt2"),
    Case("patterns", config={"rank_pattern": {"q_proj": 2}, "alpha_pattern": {"layers.1.self_attn.v_proj": 32}}),
    Case("all_linear", config={"target_modules": "all-linear"}),
    Case("regex", config={"target_modules": r".*\.layers\.1\.(self_attn\.(q|k)_proj|mlp\.up_proj)"}),
    Case("layers_to_transform", config={**QV, "layers_to_transform": [1], "layers_pattern": "layers"}),
    Case("exclude_modules", config={"target_modules": ["q_proj", "k_proj", "v_proj"], "exclude_modules": ["k_proj"]}),
    Case("adapter_name", adapter_name="other"),
    Case("two_adapters", second={"r": 4, "target_modules": ["k_proj", "o_proj"]}),
    Case("seq_cls", model="bert_seq_cls", config={"task_type": "SEQ_CLS"}),
    Case("bin", config={"modules_to_save": ["lm_head"]}, safe=False),
]


def _config(lib: ModuleType, kwargs: dict[str, Any]) -> Any:
    return lib.LoraConfig(init_lora_weights=False, **kwargs)


def _adapters(case: Case) -> list[str]:
    return [case.adapter_name] + (["second"] if case.second is not None else [])


def create_and_save(lib: ModuleType, case: Case, directory: Path) -> Any:
    """Build ``case``'s adapter(s) with ``lib`` on a fresh base, randomise them, save into ``directory``."""
    model = lib.get_peft_model(build_model(case.model), _config(lib, case.config), adapter_name=case.adapter_name)
    if case.second is not None:
        model.add_adapter("second", _config(lib, case.second))
    randomise_adapter(model)
    model.save_pretrained(directory, safe_serialization=case.safe)
    return model


def load(lib: ModuleType, case: Case, directory: Path) -> tuple[Any, list[warnings.WarningMessage]]:
    """Load ``case``'s saved adapter(s) with ``lib`` on a fresh base; also return the warnings raised."""
    name = case.adapter_name
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = lib.PeftModel.from_pretrained(
            build_model(case.model), directory if name == "default" else directory / name, adapter_name=name
        )
        if case.second is not None:
            model.load_adapter(directory / "second", adapter_name="second")
    # API deprecations (transformers warns when peft queries gradient checkpointing) say nothing about the files.
    return model, [w for w in caught if not issubclass(w.category, (DeprecationWarning, FutureWarning))]


def check_cross_load(source: str, target: str, case: Case, tmp_path: Path) -> None:
    """``source`` saves, ``target`` loads: no warnings, same outputs per adapter, same merged outputs."""
    saved = create_and_save(LIBS[source], case, tmp_path).eval()
    loaded, caught = load(LIBS[target], case, tmp_path)
    assert [str(w.message) for w in caught] == []
    inputs = model_inputs(case.model)
    base = model_output(build_model(case.model), inputs)
    for name in _adapters(case):
        saved.set_adapter(name)
        loaded.set_adapter(name)
        expected = model_output(saved, inputs)
        assert not torch.allclose(expected, base, atol=1e-3), f"adapter {name!r} does not change the output"
        torch.testing.assert_close(model_output(loaded, inputs), expected, atol=ATOL, rtol=0)
    if case.merge:
        expected = model_output(saved.merge_and_unload(), inputs)
        torch.testing.assert_close(model_output(loaded.merge_and_unload(), inputs), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_peft_adapter_loads_in_peftkit(case: Case, tmp_path: Path) -> None:
    check_cross_load("peft", "peftkit", case, tmp_path)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_peftkit_adapter_loads_in_peft(case: Case, tmp_path: Path) -> None:
    check_cross_load("peftkit", "peft", case, tmp_path)


def _read_dir(directory: Path) -> dict[str, Any]:
    """``{relative file: content}``: weights as ``{key: shape}``, the config as a dict with sets."""
    out: dict[str, Any] = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name not in IGNORED_FILES):
        rel = str(path.relative_to(directory))
        if path.suffix == ".safetensors":
            out[rel] = {k: tuple(v.shape) for k, v in load_file(path).items()}
        elif path.suffix == ".bin":
            out[rel] = {k: tuple(v.shape) for k, v in torch.load(path, weights_only=True).items()}
        else:
            config = json.loads(path.read_text())
            out[rel] = {k: set(v) if k in SET_FIELDS and isinstance(v, list) else v for k, v in config.items()}
    return out


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_saved_files_and_parameter_counts_match(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    files, printed = {}, {}
    for lib_name, lib in LIBS.items():
        model = create_and_save(lib, case, tmp_path / lib_name)
        capsys.readouterr()
        model.print_trainable_parameters()
        printed[lib_name] = capsys.readouterr().out
        files[lib_name] = _read_dir(tmp_path / lib_name)
    assert sorted(files["peftkit"]) == sorted(files["peft"])
    for rel, ours in files["peftkit"].items():
        theirs = files["peft"][rel]
        keys = sorted(set(ours) | set(theirs))
        assert {k: (theirs.get(k), ours.get(k)) for k in keys if ours.get(k) != theirs.get(k)} == {}, rel
    assert printed["peftkit"] == printed["peft"]
