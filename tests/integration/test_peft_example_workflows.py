"""PEFT's example workflows, rewritten for tiny local models, run unchanged on peftkit and on the reference.

Each workflow is ordinary PEFT user code written against a module named ``peft`` (as in PEFT's examples:
tokenizer, ``datasets`` map, ``DataLoader``, ``AdamW``, a linear schedule, a training loop, ``save_pretrained``,
``PeftModel.from_pretrained``); it runs with ``peft = peftkit`` and, as a check that it is genuine PEFT code, with
the reference ``peft``. The eight workflows: sequence classification with LoRA, IA3, prompt tuning, P-tuning and
prefix tuning; causal LM with prompt tuning (initialised from text) and prefix tuning; seq2seq LM with LoRA. Seven
build their config with ``get_peft_config`` from a dict, as PEFT's examples import it. Each must train (the
adapter moves, the base does not) and reload exactly: the reloaded adapter gives the same outputs and the same
generations as the trained one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from datasets import Dataset
from tests._tiny import build
from tests.methods._prefix_models import build_prefix_model
from tests.methods._prompt_models import make_tokenizer
from torch.optim import AdamW
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, get_linear_schedule_with_warmup

import peftkit

SENTENCES = [
    "classify this review", "the review is positive", "negative review", "this is the sentiment",
    "positive or negative", "the sentiment of this", "classify as negative", "review the sentiment",
]  # fmt: skip
LABELS = [0, 1, 0, 1, 1, 0, 0, 1]
WORD_LABELS = ["negative", "positive"]


def _train(model: Any, loader: DataLoader, epochs: int = 2, lr: float = 3e-2) -> None:
    """PEFT's example loop: AdamW over model.parameters(), linear schedule, step per batch."""
    optimizer = AdamW(params=model.parameters(), lr=lr)
    lr_scheduler = get_linear_schedule_with_warmup(
        optimizer, num_warmup_steps=0, num_training_steps=epochs * len(loader)
    )
    for _ in range(epochs):
        model.train()
        for batch in loader:
            outputs = model(**batch)
            outputs.loss.backward()
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
    model.eval()


def _classification_data(tokenizer: Any) -> DataLoader:
    dataset = Dataset.from_dict({"sentence": SENTENCES, "label": LABELS})
    tokenized = dataset.map(lambda ex: tokenizer(ex["sentence"], truncation=True, max_length=16), batched=True,
                            remove_columns=["sentence"]).rename_column("label", "labels")  # fmt: skip
    collate = lambda examples: tokenizer.pad(examples, padding="longest", return_tensors="pt")  # noqa: E731
    return DataLoader(tokenized, shuffle=True, collate_fn=collate, batch_size=4)


def _lm_data(tokenizer: Any, seq2seq: bool) -> DataLoader:
    """Causal LM: "<sentence> <label word>" with loss on every token; seq2seq: sentence -> label word."""
    targets = [WORD_LABELS[label] for label in LABELS]

    def preprocess(examples: dict[str, list[str]]) -> dict[str, Any]:
        if seq2seq:
            inputs = tokenizer(examples["sentence"], padding="max_length", max_length=6)
            labels = tokenizer(examples["target"], padding="max_length", max_length=2)["input_ids"]
        else:
            texts = [f"{s} {t}" for s, t in zip(examples["sentence"], examples["target"], strict=True)]
            inputs = tokenizer(texts, padding="max_length", max_length=7)
            labels = inputs["input_ids"]
        pad = tokenizer.pad_token_id
        inputs["labels"] = [[(t if t != pad else -100) for t in row] for row in labels]
        return inputs

    dataset = Dataset.from_dict({"sentence": SENTENCES, "target": targets})
    processed = dataset.map(preprocess, batched=True, remove_columns=["sentence", "target"]).with_format("torch")
    return DataLoader(processed, shuffle=True, batch_size=4)


def _lm(kind: str) -> Any:
    model = build_prefix_model("bloom") if kind == "causal" else build("t5")
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, None
    return model


WORKFLOWS: dict[str, tuple[str, Callable[[ModuleType, str], Any]]] = {
    "seq_cls_lora": ("seq_cls", lambda peft, tok: peft.get_peft_config(
        {"peft_type": "LORA", "task_type": "SEQ_CLS", "inference_mode": False, "r": 8, "lora_alpha": 16,
         "lora_dropout": 0.1})),
    "seq_cls_ia3": ("seq_cls", lambda peft, tok: peft.get_peft_config(
        {"peft_type": "IA3", "task_type": "SEQ_CLS", "inference_mode": False})),
    "seq_cls_prompt_tuning": ("seq_cls", lambda peft, tok: peft.get_peft_config(
        {"peft_type": "PROMPT_TUNING", "task_type": "SEQ_CLS", "num_virtual_tokens": 10})),
    "seq_cls_p_tuning": ("seq_cls", lambda peft, tok: peft.get_peft_config(
        {"peft_type": "P_TUNING", "task_type": "SEQ_CLS", "num_virtual_tokens": 20, "encoder_hidden_size": 32})),
    "seq_cls_prefix_tuning": ("seq_cls", lambda peft, tok: peft.get_peft_config(
        {"peft_type": "PREFIX_TUNING", "task_type": "SEQ_CLS", "num_virtual_tokens": 20})),
    "causal_lm_prompt_tuning": ("causal", lambda peft, tok: peft.get_peft_config(
        {"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "prompt_tuning_init": "TEXT",
         "num_virtual_tokens": 8, "prompt_tuning_init_text": "classify the sentiment of this review",
         "tokenizer_name_or_path": tok})),
    "causal_lm_prefix_tuning": ("causal", lambda peft, tok: peft.get_peft_config(
        {"peft_type": "PREFIX_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": 30})),
    "seq2seq_lora": ("seq2seq", lambda peft, tok: peft.LoraConfig(
        task_type=peft.TaskType.SEQ_2_SEQ_LM, inference_mode=False, r=8, lora_alpha=32, lora_dropout=0.1)),
}  # fmt: skip


def _run(peft: ModuleType, workflow: str, tmp_path: Path) -> None:
    kind, make_config = WORKFLOWS[workflow]
    tokenizer_path = make_tokenizer(tmp_path / "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    base = (lambda: build_prefix_model("roberta")) if kind == "seq_cls" else (lambda: _lm(kind))
    loader = _classification_data(tokenizer) if kind == "seq_cls" else _lm_data(tokenizer, kind == "seq2seq")
    torch.manual_seed(0)
    model = peft.get_peft_model(base(), make_config(peft, tokenizer_path))
    model.print_trainable_parameters()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _train(model, loader)
    after = model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert moved and moved <= {k for k in after if any(k.startswith(n) or n.startswith(k) for n in trainable)}
    model.save_pretrained(tmp_path / "adapter")
    loaded = peft.PeftModel.from_pretrained(base(), tmp_path / "adapter").eval()
    batch = next(iter(DataLoader(loader.dataset, batch_size=8, collate_fn=loader.collate_fn)))
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)
    if kind != "seq_cls":
        prompt = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        a = model.generate(**prompt, max_new_tokens=3, do_sample=False)
        assert torch.equal(loaded.generate(**prompt, max_new_tokens=3, do_sample=False), a)


def _cases() -> list[Any]:
    """(library, workflow) pairs: the reference only where it works inside transformers."""
    try:
        import peft as reference
    except ImportError:  # the workflows also run where the reference is not installed
        reference = None
    cases = []
    for name in WORKFLOWS:
        cases.append(pytest.param(peftkit, name, id=f"peftkit-{name}"))
        if reference is not None:
            cases.append(pytest.param(reference, name, id=f"peft-{name}", marks=pytest.mark.reference_peft))
    return cases


@pytest.mark.parametrize(("peft", "workflow"), _cases())
def test_example_workflow_trains_saves_and_reloads_exactly(peft: ModuleType, workflow: str, tmp_path: Path) -> None:
    _run(peft, workflow, tmp_path)
