"""Prefix tuning: each layer's extra keys and values, checked against a cache built by hand on the base model."""

from __future__ import annotations

import pytest
import torch
from tests._tiny import batch, build, target_batch
from tests.methods._prompt_models import (
    cache_keyword,
    capture_inputs,
    greedy_by_forward,
    greedy_seq2seq_by_forward,
    train_losses,
)
from transformers import BertConfig, BertForSequenceClassification, DynamicCache, LlamaForCausalLM

import peftkit
from peftkit import CheckpointError, ConfigError, PrefixTuningConfig, UnsupportedError, get_peft_model

N = 3
LAYERS, KV_HEADS, HEAD_DIM = 2, 1, 8  # tiny llama: 2 heads of 8, one key-value head


def _config(task: str = "CAUSAL_LM", **kwargs: object) -> PrefixTuningConfig:
    return PrefixTuningConfig(task_type=task, num_virtual_tokens=N, **kwargs)


def _reference_cache(prefix: torch.Tensor, batch_size: int) -> DynamicCache:
    """Layer ``i`` gets keys ``prefix[:, 2i]`` and values ``prefix[:, 2i+1]`` as ``(batch, heads, n, head_dim)``."""
    per_token = prefix.reshape(N, 2 * LAYERS, KV_HEADS, HEAD_DIM)
    layers = []
    for i in range(LAYERS):
        key = per_token[:, 2 * i].permute(1, 0, 2).expand(batch_size, -1, -1, -1)
        value = per_token[:, 2 * i + 1].permute(1, 0, 2).expand(batch_size, -1, -1, -1)
        layers.append((key, value))
    return DynamicCache(layers)


def test_dimensions_follow_the_key_value_heads() -> None:
    model = get_peft_model(build("llama"), _config())
    config = model.peft_config["default"]
    assert (config.token_dim, config.num_attention_heads, config.num_layers) == (KV_HEADS * HEAD_DIM, KV_HEADS, 2)
    assert config.encoder_hidden_size == config.token_dim
    assert model.prompt_encoder["default"].embedding.weight.shape == (N, 2 * LAYERS * KV_HEADS * HEAD_DIM)


def test_forward_is_base_model_with_the_prefix_as_cache() -> None:
    model = get_peft_model(build("llama"), _config())
    inputs = batch("llama")
    prefix = model.prompt_encoder["default"].embedding.weight.detach()
    mask = torch.cat([torch.ones(2, N, dtype=torch.long), inputs["attention_mask"]], 1)
    with torch.no_grad():
        base = build("llama")
        cache = {cache_keyword(base): _reference_cache(prefix, 2)}
        expected = base(input_ids=inputs["input_ids"], attention_mask=mask, **cache)
        got = model(**{k: v for k, v in inputs.items() if k != "labels"})
    torch.testing.assert_close(got.logits, expected.logits)
    assert got.logits.shape[1] == 6  # the prefix adds keys and values, not outputs


def test_mask_is_extended_labels_are_not_and_positions_shift() -> None:
    model = get_peft_model(build("llama"), _config())
    seen = capture_inputs(model.get_base_model())
    inputs = batch("llama")
    model(**inputs, position_ids=torch.arange(6).expand(2, -1))
    assert seen["attention_mask"].tolist() == [[1] * N + row for row in inputs["attention_mask"].tolist()]
    assert torch.equal(seen["labels"], inputs["labels"])
    assert seen["position_ids"].tolist() == [list(range(N, N + 6))] * 2
    cache = seen[cache_keyword(model.get_base_model())]
    assert cache.get_seq_length() == N + 6  # the prefix, then this forward's tokens


def test_llama_sequence_classification_reads_the_prefix_and_trains() -> None:
    """The classification forward takes the cache under whatever name the installed transformers gives it."""
    model = get_peft_model(build("llama_seq_cls"), _config("SEQ_CLS"))
    inputs = batch("llama_seq_cls")
    prefix = model.prompt_encoder["default"].embedding.weight.detach()
    mask = torch.cat([torch.ones(2, N, dtype=torch.long), inputs["attention_mask"]], 1)
    base = build("llama_seq_cls")
    with torch.no_grad():
        cache = {cache_keyword(base): _reference_cache(prefix, 2)}
        expected = base(input_ids=inputs["input_ids"], attention_mask=mask, labels=inputs["labels"], **cache)
        got = model(**inputs)
        plain = build("llama_seq_cls")(**inputs)
    torch.testing.assert_close(got.logits, expected.logits)
    torch.testing.assert_close(got.loss, expected.loss)
    assert not torch.allclose(got.logits, plain.logits, atol=1e-3)  # the prefix changes the classification
    losses = train_losses(model, target_batch("llama_seq_cls"), steps=25, lr=0.1)
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("projection", [False, True])
def test_training_loss_falls(projection: bool) -> None:
    model = get_peft_model(build("llama"), _config(prefix_projection=projection, encoder_hidden_size=12))
    losses = train_losses(model, target_batch("llama"), steps=30, lr=0.2 if not projection else 0.05)
    assert losses[-1] < 0.7 * losses[0]


def test_projection_saves_its_output_and_loads_as_a_table(tmp_path) -> None:
    model = get_peft_model(build("llama"), _config(prefix_projection=True, encoder_hidden_size=12))
    encoder = model.prompt_encoder["default"]
    model.save_pretrained(tmp_path)
    state = model.get_adapter_state_dict()
    torch.testing.assert_close(state["prompt_embeddings"], encoder.transform(encoder.embedding.weight).detach())
    loaded = peftkit.PeftModel.from_pretrained(build("llama"), tmp_path)
    assert not hasattr(loaded.prompt_encoder["default"], "transform")
    inputs = batch("llama")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)
    with pytest.warns(UserWarning, match="holds only its encoder's output"):  # loads as a trainable table
        trainable = peftkit.PeftModel.from_pretrained(build("llama"), tmp_path, is_trainable=True)
    assert trainable.prompt_encoder["default"].embedding.weight.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(trainable.eval()(**inputs).logits, model(**inputs).logits)


def test_round_trip_without_projection_can_train_on(tmp_path) -> None:
    model = get_peft_model(build("gpt2"), _config())
    model.save_pretrained(tmp_path)
    loaded = peftkit.PeftModel.from_pretrained(build("gpt2"), tmp_path, is_trainable=True)
    inputs = batch("gpt2")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)
    losses = train_losses(loaded, target_batch("gpt2"), steps=8, lr=0.2)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_generate_equals_greedy_forward_loop(kind: str) -> None:
    model = get_peft_model(build(kind), _config())
    inputs = batch(kind)
    out = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=5)
    ref = greedy_by_forward(model, inputs["input_ids"], inputs["attention_mask"], 5, positions=True)
    assert torch.equal(out, ref)


def test_seq2seq_prefix_reaches_the_decoder_and_generate_matches() -> None:
    model = get_peft_model(build("t5"), _config("SEQ_2_SEQ_LM"))
    seen = capture_inputs(model.get_base_model())
    inputs = batch("t5")
    decoder_mask = torch.ones(2, 4, dtype=torch.long)
    with torch.no_grad():
        model(**inputs, decoder_attention_mask=decoder_mask)
    assert seen["decoder_attention_mask"].shape == (2, N + 4)
    assert torch.equal(seen["attention_mask"], inputs["attention_mask"])  # the encoder sees no prefix
    assert seen[cache_keyword(model.get_base_model())].self_attention_cache.get_seq_length() == N + 4
    out = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=4)
    assert torch.equal(out, greedy_seq2seq_by_forward(model, inputs["input_ids"], inputs["attention_mask"], 4))


def test_bert_takes_the_prefix_through_its_classification_head() -> None:
    """The head's forward lists no cache argument but hands ``**kwargs`` to the backbone, whose signature does."""
    bert = BertForSequenceClassification(
        BertConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2)
    )
    model = get_peft_model(bert, _config("SEQ_CLS"))
    assert model._prompt_tuner.prefix_layout.shapes == ((2, 8), (2, 8))


class _NoCacheLlama(LlamaForCausalLM):
    """A llama whose forward takes no key/value cache (as a custom model head may)."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> object:
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)


def test_forward_without_a_cache_argument_is_refused_at_creation() -> None:
    base = build("llama")
    base.__class__ = _NoCacheLlama
    with pytest.raises(UnsupportedError, match=r"_NoCacheLlama\.forward takes no key/value cache argument"):
        get_peft_model(base, _config())


def test_bad_values_and_bad_checkpoints(tmp_path) -> None:
    with pytest.raises(ConfigError, match="num_virtual_tokens must be a positive integer"):
        PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=0)
    with pytest.raises(ConfigError, match="init_weights must be one of 'zero' or None"):
        _config(init_weights="ones")
    with pytest.raises(ConfigError, match="not a multiple of num_attention_heads"):
        get_peft_model(build("gpt2"), _config(token_dim=15, num_attention_heads=2))
    model = get_peft_model(build("llama"), _config())
    model.save_pretrained(tmp_path)
    other = build("llama")
    with pytest.raises(CheckpointError, match="needs shape"):
        peftkit.PeftModel.from_pretrained(
            other, tmp_path, config=PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
        )
    with torch.no_grad():
        torch.testing.assert_close(other(**batch("llama")).logits, build("llama")(**batch("llama")).logits)


def test_zero_init_starts_from_a_zero_prefix() -> None:
    model = get_peft_model(build("llama"), _config(init_weights="zero"))
    assert not model.prompt_encoder["default"].embedding.weight.any()
    projected = get_peft_model(build("llama"), _config(init_weights="zero", prefix_projection=True))
    assert not projected.get_adapter_state_dict()["prompt_embeddings"].any()
