"""``peftkit train``: fine-tune an adapter on a causal LM with the transformers Trainer, evaluate it before
and after, save it in PEFT's format, reload it and check its outputs, and draw the loss curve."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from peftkit.cli.errors import CliError
from peftkit.cli.evaluate import Scores, evaluate
from peftkit.cli.examples import EncodedDataset, Example, Fields, load_examples, pad_batch
from peftkit.cli.methods import MethodName, build_config, describe, method_fields, spec_for_method
from peftkit.cli.plot import save_loss_curve
from peftkit.cli.report import print_summary
from peftkit.cli.resources import EMBEDDED_DATA, embedded_path, load_causal_lm

#: Settings of the built-in job when ``--model`` and ``--data`` are both left out (tuned for ~2 CPU minutes).
EMBEDDED_DEFAULTS: dict[str, Any] = {"r": 16, "alpha": 32, "epochs": 32, "learning_rate": 3e-3, "batch_size": 32}


@dataclass
class Plan:
    """Everything ``train`` decided before training: resolved options, data and step counts."""

    model: str | None
    data: str | None
    method: str
    output_dir: str
    epochs: float
    max_steps: int
    batch_size: int
    learning_rate: float
    max_length: int
    seed: int
    method_options: dict[str, Any]


def train(
    model: str | None = None,
    data: str | None = None,
    method: MethodName = "lora",
    output_dir: str = "peftkit-output",
    epochs: float | None = None,
    max_steps: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    resume: bool = False,
    prompt_field: str | None = None,
    answer_field: str | None = None,
    text_field: str | None = None,
    eval_fraction: float = 0.1,
    max_length: int = 256,
    max_new_tokens: int | None = None,
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32",
    threads: int | None = None,
    seed: int = 0,
    **method_options: Any,
) -> int:
    """Fine-tune an adapter on a causal LM, evaluate it before and after, save it in PEFT's format.

    With no options: the built-in job. A tiny character-level Llama that ships with peftkit (pretrained to
    repeat a word: "plomek=" -> "plomek") learns to spell words backwards ("plomek=" -> "kemolp") with LoRA
    on 800 shipped examples, offline, in under two CPU minutes on one thread. It prints the held-out loss and
    exact match before and after, and writes the adapter, the loss curve and the figures to --output-dir.
    Built-in job settings: r=16, alpha=32, 32 epochs (800 steps), learning rate 3e-3, batch size 32.

    Args:
        model: Base causal LM: a local directory or a hub id (default: the built-in tiny model).
        data: Training data: a .jsonl/.json/.csv/.tsv/.txt file with named fields (prompt/answer or text),
            a folder with train.* and test.* files, or a dataset saved with `datasets` (default: the
            built-in word-reversal data).
        method: Adapter method (its options, e.g. --r, are listed under "method options").
        output_dir: Where the adapter, checkpoints, loss curve and metrics go.
        epochs: Passes over the training data (default: 3; built-in job: 32).
        max_steps: Stop after this many optimiser steps (overrides --epochs).
        batch_size: Examples per step (default: 8; built-in job: 32).
        learning_rate: Peak learning rate, linear decay (default: per method, 2e-4 for lora).
        resume: Continue from the last checkpoint in OUTPUT_DIR/checkpoints.
        prompt_field: Field holding the prompt (default: prompt, question, input, instruction, ...).
        answer_field: Field holding the answer (default: answer, completion, output, response, target).
        text_field: Field holding a plain text to learn in full (used when there is no prompt/answer).
        eval_fraction: Share of a single data file held out for evaluation.
        max_length: Longest example in tokens (longer ones are cut).
        max_new_tokens: Tokens generated per held-out answer (default: longest answer + 2).
        dtype: Weights' dtype (auto: as saved).
        threads: CPU threads for torch (default: 1 for the built-in tiny model, whose matrices are too small
            to gain from more and which then stays fast on a busy machine; torch's default otherwise).
        seed: Random seed (adapter initialisation, data order, evaluation split).
    """
    plan = make_plan({k: v for k, v in locals().items() if k != "method_options"}, method_options)
    fields = Fields(prompt_field, answer_field, text_field)
    with torch_threads(threads if threads is not None or model is not None else 1):
        return run(plan, fields, eval_fraction=eval_fraction, max_new_tokens=max_new_tokens, dtype=dtype, resume=resume)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch CPU threads (``None``: torch's setting), restoring it after."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def make_plan(options: dict[str, Any], method_options: dict[str, Any]) -> Plan:
    """Resolve defaults (the built-in job's, or the general ones) and check the numeric options.

    Args:
        options: ``train``'s own options.
        method_options: The per-method options (``None`` / ``False`` when not given).
    """
    builtin = options["model"] is None and options["data"] is None
    defaults = EMBEDDED_DEFAULTS if builtin else {"epochs": 3, "batch_size": 8}
    if builtin and options["method"] == "lora":
        method_options = {k: defaults.get(k) if v is None else v for k, v in method_options.items()}
    positive = ("r", "epochs", "max_steps", "batch_size", "learning_rate", "max_length", "num_virtual_tokens")
    for name in (*positive, "threads"):
        value = options.get(name, method_options.get(name))
        if value is not None and value <= 0:
            raise CliError(f"--{name.replace('_', '-')} must be positive, got {value}.")
    spec = spec_for_method(options["method"])  # fail early, before loading anything, on unknown methods or options
    method_fields(options["method"], method_options)
    learning_rate = options["learning_rate"] or (
        defaults["learning_rate"] if builtin and options["method"] == "lora" else spec.cli_learning_rate
    )
    return Plan(
        model=options["model"],
        data=options["data"],
        method=options["method"],
        output_dir=options["output_dir"],
        epochs=options["epochs"] or defaults["epochs"],
        max_steps=options["max_steps"] or -1,
        batch_size=options["batch_size"] or defaults["batch_size"],
        learning_rate=learning_rate,
        max_length=options["max_length"],
        seed=options["seed"],
        method_options=method_options,
    )


def total_steps(plan: Plan, n_examples: int) -> int:
    """Optimiser steps the Trainer will take (one per batch, the last batch of an epoch may be short)."""
    if plan.max_steps > 0:
        return plan.max_steps
    return max(1, math.ceil(plan.epochs * math.ceil(n_examples / plan.batch_size)))


def checkpoint_dir(output_dir: str, resume: bool) -> tuple[str, str | None]:
    """``(checkpoints folder, checkpoint to resume from)``; a fresh run gets the old ``checkpoint-N`` folders
    removed (by :func:`fit`, once everything has loaded), so that a later ``--resume`` finds this run's."""
    folder = os.path.join(output_dir, "checkpoints")
    found = sorted(
        (d for d in (os.listdir(folder) if os.path.isdir(folder) else []) if re.fullmatch(r"checkpoint-\d+", d)),
        key=lambda d: int(d.split("-")[1]),
    )
    if resume:
        if not found:
            raise CliError(f"--resume: no checkpoint-N folder in {folder}; run once without --resume first.")
        return folder, os.path.join(folder, found[-1])
    return folder, None


def clear_checkpoints(folder: str) -> None:
    """Remove the ``checkpoint-N`` folders of an earlier run from ``folder``."""
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        if re.fullmatch(r"checkpoint-\d+", name):
            shutil.rmtree(os.path.join(folder, name))


def run(
    plan: Plan, fields: Fields, *, eval_fraction: float, max_new_tokens: int | None, dtype: str, resume: bool
) -> int:
    """Load, evaluate, train, evaluate, save, reload and check, plot, report; 0 when the reload check passes."""
    import transformers

    import peftkit

    folder, checkpoint = checkpoint_dir(plan.output_dir, resume)
    data_path = plan.data or embedded_path(EMBEDDED_DATA)
    train_examples, eval_examples = load_examples(data_path, fields, eval_fraction, plan.seed)
    base, tokenizer, model_label = load_causal_lm(plan.model, dtype)
    dataset = EncodedDataset(train_examples, tokenizer, plan.max_length)
    steps = total_steps(plan, len(dataset))
    config = build_config(plan.method, plan.method_options, steps)
    args = training_arguments(plan, folder, steps)
    transformers.set_seed(plan.seed)
    model = peftkit.get_peft_model(base, config).to(args.device)  # evaluate where the Trainer will train
    trainable, total = model.get_nb_trainable_parameters()
    new_tokens = max_new_tokens or _answer_budget(eval_examples, tokenizer)
    print(f"peftkit train: {describe(config)} | model {model_label}: {total - trainable:,} params + "
          f"{trainable:,} trainable | data {plan.data or EMBEDDED_DATA + ' (built-in)'}: {len(dataset)} train / "
          f"{len(eval_examples)} held-out | {steps} steps", flush=True)  # fmt: skip

    def score() -> Scores:
        return evaluate(model, tokenizer, eval_examples, max_length=plan.max_length, max_new_tokens=new_tokens)

    before = score()
    started = time.perf_counter()
    trainer = fit(model, dataset, tokenizer, args, plan, checkpoint)
    seconds = time.perf_counter() - started
    after = score()
    adapter_dir = os.path.join(plan.output_dir, "adapter")
    model.save_pretrained(adapter_dir)
    max_diff = check_reload(model, adapter_dir, dataset, tokenizer)
    curve = os.path.join(plan.output_dir, "loss_curve.png")
    history = [(float(e["step"]), float(e["loss"])) for e in trainer.state.log_history if "loss" in e]
    save_loss_curve(curve, history, [(0.0, before.loss), (float(trainer.state.global_step), after.loss)])
    metrics = {
        "model": model_label, "data": plan.data or EMBEDDED_DATA, "adapter": describe(config),
        "steps": trainer.state.global_step, "train_seconds": round(seconds, 1), "trainable_params": trainable,
        "before": _scores_dict(before), "after": _scores_dict(after), "reload_max_abs_diff": max_diff,
        "plan": asdict(plan),
    }  # fmt: skip
    metrics_path = os.path.join(plan.output_dir, "metrics.json")
    with open(metrics_path, "w", encoding="utf-8") as fh:
        json.dump(metrics, fh, indent=2)
    paths = {"adapter": adapter_dir, "loss curve": curve, "metrics": metrics_path, "checkpoints": folder}
    print_summary(before, after, eval_examples, paths, max_diff, seconds)
    return 0 if max_diff <= 1e-4 else 1


def _answer_budget(examples: list[Example], tokenizer: Any) -> int:
    lengths = [len(tokenizer(e.answer, add_special_tokens=False)["input_ids"]) for e in examples if e.answer]
    return min(256, max(lengths, default=30) + 2)


def _scores_dict(scores: Scores) -> dict[str, Any]:
    return {"loss": round(scores.loss, 6), "exact_match": scores.exact_match, "correct": scores.correct,
            "total": scores.total}  # fmt: skip


def training_arguments(plan: Plan, folder: str, steps: int) -> Any:
    """The Trainer's arguments: linear decay after 5% warm-up, ~100 loss points, a checkpoint per quarter."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=folder,
        per_device_train_batch_size=plan.batch_size,
        learning_rate=plan.learning_rate,
        num_train_epochs=plan.epochs,
        max_steps=plan.max_steps,
        warmup_steps=0.05,
        weight_decay=0.0,
        logging_steps=max(1, steps // 100),
        logging_first_step=True,
        save_strategy="steps",
        save_steps=max(1, math.ceil(steps / 4)),
        save_total_limit=2,
        report_to="none",
        seed=plan.seed,
        disable_tqdm=False,
        dataloader_pin_memory=False,
        remove_unused_columns=False,
    )


def fit(
    model: torch.nn.Module, dataset: EncodedDataset, tokenizer: Any, args: Any, plan: Plan, checkpoint: str | None
) -> Any:
    """Train with :class:`~peftkit.cli.trainer.AdapterTrainer` (from ``checkpoint`` when resuming)."""
    from peftkit.cli.trainer import make_trainer

    pad_id = tokenizer.pad_token_id

    def collate(rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        return pad_batch(rows, pad_id)

    if checkpoint is None:
        clear_checkpoints(args.output_dir)
    callbacks = spec_for_method(plan.method).trainer_callbacks
    trainer = make_trainer(model, dataset, collate, args, callbacks() if callbacks is not None else [])
    trainer.train(resume_from_checkpoint=checkpoint)
    return trainer


@torch.no_grad()
def check_reload(model: Any, adapter_dir: str, dataset: EncodedDataset, tokenizer: Any) -> float:
    """Reload the saved adapter onto the base model and return max |logits(reloaded) - logits(trained)|.

    The trained model's own adapter is removed first (``unload``), so the comparison uses the saved files.
    """
    import peftkit

    model.eval()
    probe = pad_batch(dataset.rows[:8], tokenizer.pad_token_id)
    probe.pop("labels")
    probe = {k: v.to(next(model.parameters()).device) for k, v in probe.items()}
    expected = model(**probe).logits
    base = model.get_base_model() if model.active_peft_config.is_prompt_learning else model.unload()
    reloaded = peftkit.PeftModel.from_pretrained(base, adapter_dir).eval()
    return float((reloaded(**probe).logits - expected).abs().max())
