"""Prompt tuning: prepended virtual token embeddings, checked against the formula on the bare base model.

Also covers what the prompt methods share (masks and labels, adapters switching and deleting, disabling,
the task classes, state-dict functions), once, with the simplest encoder.
"""

from __future__ import annotations

import pytest
import torch
from tests._tiny import batch, build, target_batch
from tests.methods._prompt_models import (
    WORDS,
    capture_inputs,
    frozen_base_unchanged,
    greedy_by_forward,
    greedy_seq2seq_by_forward,
    make_tokenizer,
    train_losses,
)

import peftkit
from peftkit import ConfigError, PromptTuningConfig, TaskType, UnsupportedError, get_peft_model

N = 3  # virtual tokens


def _config(task: str = "CAUSAL_LM", **kwargs: object) -> PromptTuningConfig:
    return PromptTuningConfig(task_type=task, num_virtual_tokens=N, **kwargs)


def test_causal_forward_is_base_model_on_prepended_embeddings() -> None:
    model = get_peft_model(build("llama"), _config())
    inputs = batch("llama")
    prompts = model.prompt_encoder["default"].embedding.weight
    base = build("llama")
    embeds = torch.cat([prompts.expand(2, -1, -1), base.get_input_embeddings()(inputs["input_ids"])], 1)
    mask = torch.cat([torch.ones(2, N, dtype=torch.long), inputs["attention_mask"]], 1)
    labels = torch.cat([torch.full((2, N), -100), inputs["labels"]], 1)
    with torch.no_grad():
        expected = base(inputs_embeds=embeds, attention_mask=mask, labels=labels)
        got = model(**inputs)
    torch.testing.assert_close(got.logits, expected.logits)
    torch.testing.assert_close(got.loss, expected.loss)
    assert got.logits.shape[1] == N + 6


def test_mask_labels_and_token_types_reach_the_model_extended() -> None:
    model = get_peft_model(build("llama"), _config())
    seen = capture_inputs(model.get_base_model())
    inputs = batch("llama")
    with pytest.warns(UserWarning, match="position_ids are ignored"):
        model(**inputs, position_ids=torch.arange(6).expand(2, -1))
    assert seen["attention_mask"].tolist() == [[1] * N + row for row in inputs["attention_mask"].tolist()]
    assert seen["labels"].tolist() == [[-100] * N + row for row in inputs["labels"].tolist()]
    assert seen["inputs_embeds"].shape == (2, N + 6, 16) and seen.get("input_ids") is None
    assert seen.get("position_ids") is None


def test_training_moves_only_the_prompt_and_the_loss_falls() -> None:
    model = get_peft_model(build("llama"), _config())
    before = {k: v.clone() for k, v in model.get_base_model().state_dict().items()}
    start = model.prompt_encoder["default"].embedding.weight.detach().clone()
    losses = train_losses(model, target_batch("llama"), steps=30)
    assert losses[-1] < 0.7 * losses[0]
    assert frozen_base_unchanged(before, model.get_base_model())
    assert not torch.equal(start, model.prompt_encoder["default"].embedding.weight)


def test_round_trip_and_trainable_reload(tmp_path) -> None:
    model = get_peft_model(build("llama"), _config())
    train_losses(model, batch("llama"), steps=3)
    model.save_pretrained(tmp_path)
    state = peftkit.get_peft_model_state_dict(model)
    assert list(state) == ["prompt_embeddings"] and state["prompt_embeddings"].shape == (N, 16)
    loaded = peftkit.PeftModel.from_pretrained(build("llama"), tmp_path)
    assert type(loaded) is peftkit.PeftModelForCausalLM
    inputs = batch("llama")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)
    assert loaded.get_nb_trainable_parameters()[0] == 0
    trainable = peftkit.PeftModel.from_pretrained(build("llama"), tmp_path, is_trainable=True)
    assert trainable.get_nb_trainable_parameters()[0] == N * 16
    losses = train_losses(trainable, target_batch("llama"), steps=10)
    assert losses[-1] < losses[0]


def test_generate_equals_greedy_forward_loop() -> None:
    model = get_peft_model(build("llama"), _config())
    inputs = batch("llama")
    out = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=5)
    ref = greedy_by_forward(model, inputs["input_ids"], inputs["attention_mask"], 5)
    assert torch.equal(out, ref)


def test_seq2seq_prompts_go_to_the_encoder_and_generate_matches() -> None:
    model = get_peft_model(build("t5"), _config("SEQ_2_SEQ_LM"))
    assert model.prompt_encoder["default"].embedding.weight.shape == (2 * N, 16)  # encoder and decoder submodules
    inputs = batch("t5")
    base = build("t5")
    prompts = model.prompt_encoder["default"].embedding.weight[:N]
    embeds = torch.cat([prompts.expand(2, -1, -1), base.get_input_embeddings()(inputs["input_ids"])], 1)
    mask = torch.cat([torch.ones(2, N, dtype=torch.long), inputs["attention_mask"]], 1)
    with torch.no_grad():
        expected = base(inputs_embeds=embeds, attention_mask=mask, labels=inputs["labels"])
        got = model(**inputs)
    torch.testing.assert_close(got.logits, expected.logits)
    out = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=4)
    assert torch.equal(out, greedy_seq2seq_by_forward(model, inputs["input_ids"], inputs["attention_mask"], 4))


def test_sequence_classification_trains_head_copy_and_prompt(tmp_path) -> None:
    model = get_peft_model(build("llama_seq_cls"), _config("SEQ_CLS"))
    assert model.peft_config["default"].modules_to_save == ["classifier", "score"]
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == {"prompt_encoder.default.embedding.weight", "base_model.score.modules_to_save.default.weight"}
    losses = train_losses(model, target_batch("llama_seq_cls"), steps=25)
    assert losses[-1] < 0.7 * losses[0]
    model.save_pretrained(tmp_path)
    loaded = peftkit.PeftModel.from_pretrained(build("llama_seq_cls"), tmp_path)
    inputs = batch("llama_seq_cls")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)


def test_feature_extraction_prepends_prompts() -> None:
    model = get_peft_model(build("llama_base"), _config("FEATURE_EXTRACTION"))
    inputs = {k: v for k, v in batch("llama").items() if k != "labels"}
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state
    assert hidden.shape == (2, N + 6, 16)


def test_text_and_sample_vocab_initialisation(tmp_path) -> None:
    path = make_tokenizer(tmp_path / "tok")
    model = get_peft_model(
        build("llama"),
        PromptTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=7,
            prompt_tuning_init="TEXT",
            prompt_tuning_init_text="classify the sentiment",
            tokenizer_name_or_path=path,
        ),
    )
    ids = [WORDS.index(w) for w in "classify the sentiment".split()]
    expected = model.get_base_model().get_input_embeddings().weight[(ids * 3)[:7]]
    torch.testing.assert_close(model.prompt_encoder["default"].embedding.weight, expected)
    sampled = get_peft_model(build("llama"), _config(prompt_tuning_init="SAMPLE_VOCAB"))
    vocab = sampled.get_base_model().get_input_embeddings().weight
    rows = sampled.prompt_encoder["default"].embedding.weight
    assert all(any(torch.equal(row, v) for v in vocab) for row in rows)


def test_several_adapters_switch_disable_and_delete() -> None:
    model = get_peft_model(build("llama"), _config())
    model.add_adapter("other", _config())
    inputs = batch("llama")
    with torch.no_grad():
        first = model(**inputs).logits
        model.set_adapter("other")
        second = model(**inputs).logits
        with model.disable_adapter():
            plain = model(**inputs).logits
        base = build("llama")(**inputs).logits
    assert not torch.allclose(first, second)
    torch.testing.assert_close(plain, base)
    model.delete_adapter("other")
    assert model.active_adapter == "default" and list(model.prompt_encoder) == ["default"]
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, first)


def test_set_peft_model_state_dict_overwrites_the_prompt() -> None:
    source = get_peft_model(build("llama"), _config())
    target = get_peft_model(build("llama"), _config())
    peftkit.set_peft_model_state_dict(target, peftkit.get_peft_model_state_dict(source))
    torch.testing.assert_close(
        target.prompt_encoder["default"].embedding.weight, source.prompt_encoder["default"].embedding.weight
    )


@pytest.mark.parametrize("n", [0, -2, True, 1.5])
def test_num_virtual_tokens_must_be_positive(n: object) -> None:
    with pytest.raises(ConfigError, match="num_virtual_tokens must be a positive integer"):
        PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n)  # type: ignore[arg-type]


def test_bad_initialisation_settings() -> None:
    with pytest.raises(ConfigError, match="needs tokenizer_name_or_path"):
        _config(prompt_tuning_init="TEXT", prompt_tuning_init_text="hi")
    with pytest.raises(ConfigError, match="needs prompt_tuning_init_text"):
        _config(prompt_tuning_init="TEXT", tokenizer_name_or_path="somewhere")
    with pytest.raises(ConfigError, match="is not one of"):
        _config(prompt_tuning_init="ZEROS")
    with pytest.raises(ConfigError, match="tokenizer_kwargs is only used"):
        _config(tokenizer_kwargs={"use_fast": True})
    with pytest.raises(ConfigError, match="num_virtual_tokens is required"):
        get_peft_model(build("llama"), PromptTuningConfig(task_type="CAUSAL_LM"))


def test_tasks_without_prompt_support_are_refused() -> None:
    config = PromptTuningConfig(task_type=TaskType.TOKEN_CLS, num_virtual_tokens=N)
    with pytest.raises(UnsupportedError, match="not implemented for task TOKEN_CLS"):
        get_peft_model(build("llama_base"), config)
    with pytest.raises(UnsupportedError, match="cannot be injected into a model"):
        peftkit.inject_adapter_in_model(_config(), build("llama"))
