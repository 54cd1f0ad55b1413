"""``scripts/peft_suite_hub.py``: a built stand-in id resolves through huggingface_hub's cache offline and loads
with ``from_pretrained`` (model and tokenizer), the same weights for the same seed; ``--local-hub`` reaches the
pytest environment of both sides."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import try_to_load_from_cache
from transformers import AutoModelForCausalLM, AutoTokenizer

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import peft_suite  # noqa: E402
import peft_suite_hub  # noqa: E402

MODEL_ID = "peft-internal-testing/tiny-random-OPTForCausalLM"


def test_built_id_loads_offline_from_the_cache(tmp_path: Path) -> None:
    assert peft_suite_hub.build_hub(tmp_path, [MODEL_ID]) == [MODEL_ID]
    assert peft_suite_hub.build_hub(tmp_path, [MODEL_ID]) == []  # built once, then reused
    resolved = try_to_load_from_cache(MODEL_ID, "config.json", cache_dir=tmp_path)
    assert isinstance(resolved, str) and Path(resolved).parent == peft_suite_hub.snapshot_dir(tmp_path, MODEL_ID)

    model = AutoModelForCausalLM.from_pretrained(MODEL_ID, cache_dir=tmp_path, local_files_only=True)
    assert type(model).__name__ == "OPTForCausalLM" and model.name_or_path == MODEL_ID
    assert model.config.hidden_size == 32 and model.config.vocab_size == peft_suite_hub.VOCAB
    tokenizer = AutoTokenizer.from_pretrained(MODEL_ID, cache_dir=tmp_path, local_files_only=True)
    ids = tokenizer("ab", add_special_tokens=False).input_ids
    assert len(ids) == 2 and all(4 <= i < peft_suite_hub.VOCAB for i in ids) and ids[0] != ids[1]
    assert tokenizer.pad_token_id == model.config.pad_token_id

    again = tmp_path / "again"
    peft_suite_hub.build_hub(again, [MODEL_ID])
    twin = AutoModelForCausalLM.from_pretrained(MODEL_ID, cache_dir=again, local_files_only=True)
    for (name, weight), (_, other) in zip(model.state_dict().items(), twin.state_dict().items(), strict=True):
        assert torch.equal(weight, other), name


def test_unknown_id_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        peft_suite_hub.build_hub(tmp_path, ["nobody/not-described"])
    assert not any(tmp_path.iterdir())


def test_local_hub_becomes_the_hub_cache_of_both_sides(tmp_path: Path) -> None:
    for side in ("reference", "peftkit"):
        env = peft_suite.pytest_env(side, tmp_path, tmp_path / "src", tmp_path / "hub")
        assert env["HF_HUB_CACHE"] == str(tmp_path / "hub") and env["HF_HUB_OFFLINE"] == "1"
    assert peft_suite.parse_args(["--local-hub", "x"]).local_hub == Path("x")
