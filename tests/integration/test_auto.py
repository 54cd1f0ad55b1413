"""AutoPeftModel*: the base model named in adapter_config.json is loaded from a local directory (offline)
and the adapter attached, for every task class."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from tests._tiny import llama_config
from transformers import BertConfig, T5Config

import peftkit

BERT = BertConfig(
    vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, num_labels=2
)
LLAMA = llama_config(layers=1)
T5 = T5Config(vocab_size=50, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, decoder_start_token_id=0)

CASES = [
    # (auto peft class, transformers auto class, model config, task_type, peft class)
    ("AutoPeftModelForCausalLM", "AutoModelForCausalLM", LLAMA, "CAUSAL_LM", "PeftModelForCausalLM"),
    ("AutoPeftModelForSeq2SeqLM", "AutoModelForSeq2SeqLM", T5, "SEQ_2_SEQ_LM", "PeftModelForSeq2SeqLM"),
    (
        "AutoPeftModelForSequenceClassification",
        "AutoModelForSequenceClassification",
        BERT,
        "SEQ_CLS",
        "PeftModelForSequenceClassification",
    ),
    (
        "AutoPeftModelForTokenClassification",
        "AutoModelForTokenClassification",
        BERT,
        "TOKEN_CLS",
        "PeftModelForTokenClassification",
    ),
    (
        "AutoPeftModelForQuestionAnswering",
        "AutoModelForQuestionAnswering",
        BERT,
        "QUESTION_ANS",
        "PeftModelForQuestionAnswering",
    ),
    ("AutoPeftModelForFeatureExtraction", "AutoModel", BERT, "FEATURE_EXTRACTION", "PeftModelForFeatureExtraction"),
    ("AutoPeftModel", "AutoModelForCausalLM", LLAMA, None, "PeftModel"),
]


def _inputs(config: transformers.PretrainedConfig) -> dict[str, torch.Tensor]:
    ids = torch.randint(1, 50, (2, 6))
    if config.model_type == "t5":
        return {"input_ids": ids, "decoder_input_ids": ids[:, :3]}
    return {"input_ids": ids}


def _first_output(out: object) -> torch.Tensor:
    for name in ("logits", "start_logits", "last_hidden_state"):
        if getattr(out, name, None) is not None:
            return getattr(out, name)
    raise AssertionError(f"no output tensor in {type(out).__name__}")


@pytest.mark.parametrize(("auto_name", "hf_auto", "config", "task", "peft_cls"), CASES, ids=[c[0] for c in CASES])
def test_auto_peft_model_loads_base_and_adapter(
    tmp_path: Path, auto_name: str, hf_auto: str, config: transformers.PretrainedConfig, task: str | None, peft_cls: str
) -> None:
    torch.manual_seed(0)
    base_dir = tmp_path / "base"
    getattr(transformers, hf_auto).from_config(config).save_pretrained(base_dir)
    base = getattr(transformers, hf_auto).from_pretrained(base_dir)
    targets = ["q", "v"] if config.model_type == "t5" else (["query", "value"] if "bert" in config.model_type else None)
    lora = peftkit.LoraConfig(task_type=task, r=4, init_lora_weights=False, target_modules=targets)
    model = peftkit.get_peft_model(base, lora).eval()
    model.save_pretrained(tmp_path / "adapter")

    loaded = getattr(peftkit, auto_name).from_pretrained(tmp_path / "adapter")

    assert type(loaded).__name__ == peft_cls
    assert loaded.peft_config["default"].base_model_name_or_path == str(base_dir)
    inputs = _inputs(config)
    with torch.no_grad():
        expected = _first_output(model(**inputs))
        torch.testing.assert_close(_first_output(loaded(**inputs)), expected, atol=1e-5, rtol=1e-5)
        with model.disable_adapter():
            assert not torch.allclose(_first_output(model(**inputs)), expected, atol=1e-4)


def test_auto_peft_model_without_base_name_is_a_clear_error(tmp_path: Path) -> None:
    model = peftkit.get_peft_model(
        transformers.AutoModelForCausalLM.from_config(LLAMA), peftkit.LoraConfig(task_type="CAUSAL_LM", r=2)
    )
    model.save_pretrained(tmp_path)
    with pytest.raises(peftkit.ConfigError, match="base_model_name_or_path"):
        peftkit.AutoPeftModelForCausalLM.from_pretrained(tmp_path)


def test_auto_class_for_another_task_is_refused(tmp_path: Path) -> None:
    base_dir = tmp_path / "base"
    transformers.AutoModelForCausalLM.from_config(LLAMA).save_pretrained(base_dir)
    base = transformers.AutoModelForCausalLM.from_pretrained(base_dir)
    peftkit.get_peft_model(base, peftkit.LoraConfig(task_type="CAUSAL_LM", r=2)).save_pretrained(tmp_path / "a")
    with pytest.raises(peftkit.ConfigError, match="CAUSAL_LM"):
        peftkit.AutoPeftModelForSequenceClassification.from_pretrained(tmp_path / "a")
