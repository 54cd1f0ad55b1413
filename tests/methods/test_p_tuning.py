"""P-tuning: prompts produced by an MLP or a bidirectional LSTM, checked against the formula on the base model."""

from __future__ import annotations

import pytest
import torch
from tests._tiny import batch, build, target_batch
from tests.methods._prompt_models import capture_inputs, greedy_by_forward, train_losses

import peftkit
from peftkit import ConfigError, PromptEncoderConfig, get_peft_model

N = 3


def _config(kind: str = "MLP", task: str = "CAUSAL_LM", **kwargs: object) -> PromptEncoderConfig:
    return PromptEncoderConfig(
        task_type=task, num_virtual_tokens=N, encoder_reparameterization_type=kind, encoder_hidden_size=12, **kwargs
    )


def _reference_prompts(encoder: torch.nn.Module, kind: str) -> torch.Tensor:
    """MLP: ``W3 relu(W2 relu(W1 E))``; LSTM: ``W2 relu(W1 BiLSTM(E))``, the LSTM over all tokens at once."""
    embeds = encoder.embedding.weight
    if kind == "LSTM":
        embeds = encoder.lstm_head(embeds.unsqueeze(0))[0][0]
        first, last = encoder.mlp_head[0], encoder.mlp_head[2]
        return last(torch.relu(first(embeds)))
    w1, w2, w3 = encoder.mlp_head[0], encoder.mlp_head[2], encoder.mlp_head[4]
    return w3(torch.relu(w2(torch.relu(w1(embeds)))))


@pytest.mark.parametrize("kind", ["MLP", "LSTM"])
def test_forward_is_base_model_on_encoded_prompts(kind: str) -> None:
    model = get_peft_model(build("llama"), _config(kind))
    inputs = batch("llama")
    base = build("llama")
    with torch.no_grad():
        prompts = _reference_prompts(model.prompt_encoder["default"], kind)
        embeds = torch.cat([prompts.expand(2, -1, -1), base.get_input_embeddings()(inputs["input_ids"])], 1)
        mask = torch.cat([torch.ones(2, N, dtype=torch.long), inputs["attention_mask"]], 1)
        labels = torch.cat([torch.full((2, N), -100), inputs["labels"]], 1)
        expected = base(inputs_embeds=embeds, attention_mask=mask, labels=labels)
        got = model(**inputs)
    torch.testing.assert_close(got.logits, expected.logits)
    torch.testing.assert_close(got.loss, expected.loss)


@pytest.mark.parametrize("kind", ["MLP", "LSTM"])
def test_training_loss_falls(kind: str) -> None:
    model = get_peft_model(build("llama"), _config(kind))
    losses = train_losses(model, target_batch("llama"), steps=30, lr=0.05)
    assert losses[-1] < 0.7 * losses[0]


def test_saves_the_encoder_output_and_loads_a_table(tmp_path) -> None:
    model = get_peft_model(build("llama"), _config("LSTM"))
    train_losses(model, target_batch("llama"), steps=3)
    model.save_pretrained(tmp_path)
    saved = model.get_adapter_state_dict()["prompt_embeddings"]
    with torch.no_grad():
        torch.testing.assert_close(saved, _reference_prompts(model.prompt_encoder["default"], "LSTM"))
    loaded = peftkit.PeftModel.from_pretrained(build("llama"), tmp_path)
    encoder = loaded.prompt_encoder["default"]
    assert [n for n, _ in encoder.named_parameters()] == ["embedding.weight"]
    inputs = batch("llama")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)
    out = loaded.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=4)
    assert torch.equal(out, greedy_by_forward(model, inputs["input_ids"], inputs["attention_mask"], 4))
    with pytest.raises(ConfigError, match="holds only its encoder's output"):
        peftkit.PeftModel.from_pretrained(build("llama"), tmp_path, is_trainable=True)


def test_seq2seq_encodes_both_submodules_and_feeds_the_first_to_the_encoder() -> None:
    model = get_peft_model(build("t5"), _config("LSTM", "SEQ_2_SEQ_LM"))
    encoder = model.prompt_encoder["default"]
    assert encoder.embedding.weight.shape == (2 * N, 16)
    seen = capture_inputs(model.get_base_model())
    inputs = batch("t5")
    with torch.no_grad():
        model(**inputs)
        prompts = _reference_prompts(encoder, "LSTM")  # the LSTM reads all 2N tokens
    torch.testing.assert_close(seen["inputs_embeds"][:, :N], prompts[:N].expand(2, -1, -1))
    assert seen["attention_mask"].shape == (2, N + 6) and torch.equal(seen["labels"], inputs["labels"])


def test_bad_config_values() -> None:
    with pytest.raises(ConfigError, match="is not 'MLP' or 'LSTM'"):
        _config("GRU")
    with pytest.raises(ConfigError, match="encoder_dropout must be in"):
        _config(encoder_dropout=1.5)
    with pytest.raises(ConfigError, match="encoder_num_layers must be a positive integer"):
        _config("LSTM", encoder_num_layers=0)
    with pytest.raises(ConfigError, match="num_virtual_tokens must be a positive integer"):
        PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=-1)
    with pytest.warns(UserWarning, match="encoder_num_layers=3 is ignored"):
        get_peft_model(build("llama"), _config(encoder_num_layers=3))
