"""The README.md model card ``save_pretrained`` writes: YAML metadata equal to the reference peft's, an existing
card updated (its text and fields kept), written in the same commit as the adapter files.

Deliberate difference: tags a user wrote into an existing card are kept beside the adapter's (the reference
replaces the tag list); the card text is peftkit's own.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import peft
import pytest
import safetensors.torch
from huggingface_hub import ModelCard
from tests._tiny import build, tiny_bert_cls

import peftkit

LIBS = {"peft": peft, "peftkit": peftkit}
USER_CARD = "---\nlicense: mit\npipeline_tag: text-classification\n---\n# My adapter\n\nNotes the user wrote.\n"


def _llama(named: bool = False) -> Any:
    model = build("llama")
    if named:
        model.config._name_or_path = model.name_or_path = "org/tiny-llama"
        model.add_model_tags(["my-tag"])
    return model


CASES: dict[str, tuple[Any, Any]] = {
    "lora-causal-named": (lambda: _llama(named=True), lambda lib: lib.LoraConfig(task_type="CAUSAL_LM", r=2)),
    "lora-no-task": (_llama, lambda lib: lib.LoraConfig(r=2, target_modules=["q_proj"])),
    "ia3-seq2seq": (lambda: build("t5"), lambda lib: lib.IA3Config(task_type="SEQ_2_SEQ_LM")),
    "prompt-seq-cls": (tiny_bert_cls, lambda lib: lib.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=2)),
    "prefix-causal": (_llama, lambda lib: lib.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2)),
}


def _save(lib: ModuleType, case: str, directory: Path, existing: str | None = None, **kwargs: Any) -> ModelCard:
    build_model, config = CASES[case]
    if existing is not None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "README.md").write_text(existing)
    model = LIBS[lib.__name__].get_peft_model(build_model(), config(lib))
    model.save_pretrained(directory, **kwargs)
    return ModelCard.load(directory / "README.md")


@pytest.mark.parametrize("case", list(CASES))
def test_new_card_metadata_equals_the_references(case: str, tmp_path: Path) -> None:
    mine = _save(peftkit, case, tmp_path / "peftkit")
    theirs = _save(peft, case, tmp_path / "peft")
    assert mine.data.to_dict() == theirs.data.to_dict()
    assert mine.data.library_name == "peft"


def test_existing_card_is_updated_as_the_reference_does_and_its_text_kept(tmp_path: Path) -> None:
    mine = _save(peftkit, "lora-causal-named", tmp_path / "peftkit", existing=USER_CARD)
    theirs = _save(peft, "lora-causal-named", tmp_path / "peft", existing=USER_CARD)
    assert mine.data.to_dict() == theirs.data.to_dict()
    assert mine.data.license == "mit" and mine.data.pipeline_tag == "text-classification"  # the user's choice
    assert mine.text.startswith("# My adapter\n\nNotes the user wrote.\n")
    again = _save(peftkit, "lora-causal-named", tmp_path / "peftkit")
    assert again.content == mine.content  # a second save changes nothing (the version line is there once)


def test_user_tags_are_kept_beside_the_adapters(tmp_path: Path) -> None:
    card = _save(peftkit, "lora-no-task", tmp_path, existing="---\ntags:\n- mine\n---\nText.\n")
    assert card.data.tags == sorted(["mine", "base_model:adapter:", "lora", "transformers"])


def test_card_goes_to_the_root_even_without_the_default_adapter(tmp_path: Path) -> None:
    model = peftkit.get_peft_model(_llama(), peftkit.LoraConfig(r=2), adapter_name="other")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "README.md").is_file() and not (tmp_path / "other" / "README.md").exists()
    assert ModelCard.load(tmp_path / "README.md").data.library_name == "peft"


def test_failed_save_keeps_the_previous_card(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _save(peftkit, "lora-no-task", tmp_path / "first")
    (tmp_path / "README.md").write_text(USER_CARD)  # the user's card, not yet updated by any save
    before = (tmp_path / "README.md").read_bytes()

    def full_disk(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(OSError, match="No space left"):
        _save(peftkit, "lora-no-task", tmp_path)
    assert (tmp_path / "README.md").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "first"]  # nothing half-written


@pytest.mark.parametrize("case", list(CASES))
def test_new_card_text_describes_the_adapter_and_is_as_filled_as_the_references(case: str, tmp_path: Path) -> None:
    """A new card's text says what the adapter is (method, base, targets, rank, trainable share) and how to load
    it, and is pre-filled about as fully as the reference's template (PEFT's suite checks > 1000 characters)."""
    mine = _save(peftkit, case, tmp_path / "peftkit")
    theirs = _save(peft, case, tmp_path / "peft")
    assert len(str(mine.content)) > 1000 and len(str(theirs.content)) > 1000
    build_model, config = CASES[case]
    model = peftkit.get_peft_model(build_model(), config(peftkit))
    trainable, total = model.get_nb_trainable_parameters()
    active = model.active_peft_config
    assert f"Trainable parameters: {trainable:,} of {total:,}" in mine.text
    assert f"Method: `{active.peft_type.value}`" in mine.text
    for target in sorted(getattr(active, "target_modules", None) or [])[:8]:
        assert f"`{target}`" in mine.text
    if getattr(active, "r", None) is not None and hasattr(active, "lora_alpha"):
        assert f"`r={active.r}`, `lora_alpha={active.lora_alpha}`" in mine.text
