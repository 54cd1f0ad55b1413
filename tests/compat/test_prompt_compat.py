"""Prompt methods (prompt tuning, prefix tuning, P-tuning) against the reference peft 0.21.2, both directions.

For each case one library creates an adapter on a tiny model (weights perturbed so nothing is trivial) and
saves it; the other loads it on an identical base model: forward outputs (logits and loss) and greedy
generations must be equal. Files saved by both libraries must have the same keys, shapes and config JSON, and
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
from tests._tiny import batch, build
from tests.methods._prompt_models import make_tokenizer

import peftkit

# peft warns at every generation step of prompt tuning / P-tuning that it drops transformers' position ids.
pytestmark = pytest.mark.filterwarnings("ignore:Position ids are not supported:UserWarning")

LIBS = {"peft": peft, "peftkit": peftkit}
ATOL, RTOL = 1e-5, 1e-4
LM_KINDS = ("llama", "gpt2", "t5")
TASKS = {"llama": "CAUSAL_LM", "gpt2": "CAUSAL_LM", "t5": "SEQ_2_SEQ_LM", "llama_seq_cls": "SEQ_CLS"}


@dataclass(frozen=True)
class Case:
    config_class: str
    kind: str
    options: dict[str, Any] = field(default_factory=dict)

    def config(self, lib: ModuleType) -> Any:
        cls = getattr(lib, self.config_class)
        return cls(task_type=TASKS[self.kind], num_virtual_tokens=3, **self.options)

    def __str__(self) -> str:
        extra = "-".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.config_class}-{self.kind}" + (f"-{extra}" if extra else "")


CASES = [
    Case("PromptTuningConfig", "llama"),
    Case("PromptTuningConfig", "gpt2"),
    Case("PromptTuningConfig", "t5"),
    Case("PromptTuningConfig", "llama_seq_cls"),
    Case("PrefixTuningConfig", "llama"),
    Case("PrefixTuningConfig", "llama", {"prefix_projection": True, "encoder_hidden_size": 12}),
    Case("PrefixTuningConfig", "gpt2"),
    Case("PrefixTuningConfig", "t5"),
    Case("PrefixTuningConfig", "llama_seq_cls"),
    Case("PromptEncoderConfig", "llama", {"encoder_hidden_size": 12}),
    Case("PromptEncoderConfig", "llama", {"encoder_reparameterization_type": "LSTM"}),
    Case("PromptEncoderConfig", "t5", {"encoder_reparameterization_type": "LSTM", "encoder_num_layers": 1}),
]


def _create(lib: str, case: Case, adapter_name: str = "default") -> Any:
    """A fresh adapter of ``case`` made by ``lib``, with every trainable tensor perturbed."""
    torch.manual_seed(5)
    model = LIBS[lib].get_peft_model(build(case.kind), case.config(LIBS[lib]), adapter_name=adapter_name)
    gen = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.3 * torch.randn(param.shape, generator=gen))
    return model.eval()


def _load(lib: str, case: Case, path: Path, adapter_name: str = "default") -> Any:
    """Load with the other library; a file written by one loads in the other without a warning about it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = LIBS[lib].PeftModel.from_pretrained(build(case.kind), path, adapter_name=adapter_name).eval()
    # transformers' own deprecation notices (raised inside peft) say nothing about the file.
    assert [str(w.message) for w in caught if not issubclass(w.category, (FutureWarning, DeprecationWarning))] == []
    return model


def _assert_same_behaviour(creator: Any, loaded: Any, case: Case) -> None:
    inputs = batch(case.kind)
    with torch.no_grad():
        expected, got = creator(**inputs), loaded(**inputs)
    torch.testing.assert_close(got.logits, expected.logits, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(got.loss, expected.loss, atol=ATOL, rtol=RTOL)
    if case.kind in LM_KINDS:
        prompt = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
        a = creator.generate(**prompt, max_new_tokens=5, do_sample=False)
        b = loaded.generate(**prompt, max_new_tokens=5, do_sample=False)
        assert torch.equal(a, b)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_saved_by_peft_loads_in_peftkit(case: Case, tmp_path: Path) -> None:
    creator = _create("peft", case)
    creator.save_pretrained(tmp_path)
    _assert_same_behaviour(creator, _load("peftkit", case, tmp_path, adapter_name="other"), case)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_saved_by_peftkit_loads_in_peft(case: Case, tmp_path: Path) -> None:
    creator = _create("peftkit", case, adapter_name="mine")
    creator.save_pretrained(tmp_path)
    _assert_same_behaviour(creator, _load("peft", case, tmp_path / "mine"), case)


def _saved(lib: str, case: Case, path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, Any]]:
    _create(lib, case).save_pretrained(path)
    tensors = load_file(path / "adapter_model.safetensors")
    config = json.loads((path / "adapter_config.json").read_text())
    # PEFT's SEQ_CLS wrapper appends ("classifier", "score") twice for prompt methods; the list is a set.
    if config.get("modules_to_save") is not None:
        config["modules_to_save"] = sorted(set(config["modules_to_save"]))
    return {k: tuple(v.shape) for k, v in tensors.items()}, config


@pytest.mark.parametrize("case", CASES, ids=str)
def test_files_and_trainable_parameters_agree(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _saved("peft", case, tmp_path / "peft") == _saved("peftkit", case, tmp_path / "peftkit")
    lines = []
    for lib in LIBS:
        torch.manual_seed(5)
        LIBS[lib].get_peft_model(build(case.kind), case.config(LIBS[lib])).print_trainable_parameters()
        lines.append(capsys.readouterr().out)
    assert lines[0] == lines[1] and lines[0].startswith("trainable params:")


def test_text_initialisation_matches(tmp_path: Path) -> None:
    path = make_tokenizer(tmp_path / "tok")
    options = {
        "prompt_tuning_init": "TEXT",
        "prompt_tuning_init_text": "the review is positive",
        "tokenizer_name_or_path": path,
    }
    case = Case("PromptTuningConfig", "llama", options)
    made = [LIBS[lib].get_peft_model(build("llama"), case.config(LIBS[lib])) for lib in LIBS]
    torch.testing.assert_close(
        made[1].get_adapter_state_dict(), peft.get_peft_model_state_dict(made[0]), atol=0, rtol=0
    )
