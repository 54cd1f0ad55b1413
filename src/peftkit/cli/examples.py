"""Training examples for ``peftkit train``: reading them from files, tokenising them, batching them.

An example is a prompt and an answer (the loss, and exact match, look at the answer only), or a bare text
(the loss looks at every token). Files are JSON lines, JSON, CSV/TSV with a header, plain text (one example
per line), or a directory: a ``datasets`` dataset saved with ``save_to_disk`` (``datasets`` is imported only
then), or a folder with ``train.*`` and ``test.*`` / ``validation.*`` files.
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from peftkit.cli.errors import CliError

PROMPT_FIELDS = ("prompt", "question", "input", "instruction", "source", "query")
ANSWER_FIELDS = ("answer", "completion", "output", "response", "target")
TEXT_FIELDS = ("text", "content")
SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".txt")
EVAL_SPLITS = ("test", "validation", "eval", "valid", "dev")
IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    """One training example: ``prompt`` + ``answer``, or ``text`` alone (then ``answer`` is ``None``)."""

    prompt: str
    answer: str | None = None


@dataclass(frozen=True)
class Fields:
    """Which record fields hold the prompt, the answer and the text (``None``: pick from the usual names)."""

    prompt: str | None = None
    answer: str | None = None
    text: str | None = None


# -- reading ---------------------------------------------------------------------------------------
def read_records(path: str) -> list[dict[str, Any]]:
    """The records of one data file, by suffix (see the module docstring)."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUFFIXES:
        raise CliError(f"{path}: unknown data format {suffix or '(no suffix)'!r}; use one of {', '.join(SUFFIXES)}.")
    with open(path, encoding="utf-8", newline="") as fh:
        if suffix == ".txt":
            return [{"text": line.rstrip("\n")} for line in fh if line.strip()]
        if suffix in (".csv", ".tsv"):
            return list(csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ","))
        if suffix == ".json":
            data = _parse_json(fh.read(), path)
            return data if isinstance(data, list) else [data]
        return [_parse_json(line, f"{path}, line {n}") for n, line in enumerate(fh, 1) if line.strip()]


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}).") from None


def to_examples(records: Iterable[Any], fields: Fields, where: str) -> list[Example]:
    """Turn records (dicts) into examples, with one clear error when the fields cannot be found."""
    records = list(records)
    if not records:
        raise CliError(f"{where}: no examples found.")
    if not all(isinstance(r, dict) for r in records):
        raise CliError(f"{where}: every record must be an object with named fields.")
    names = list(records[0])
    prompt = fields.prompt or _first_present(PROMPT_FIELDS, names)
    answer = fields.answer or _first_present(ANSWER_FIELDS, names)
    text = fields.text or _first_present(TEXT_FIELDS, names)
    if prompt and answer and not fields.text:
        return [Example(_field(r, prompt, where), _field(r, answer, where)) for r in records]
    if text:
        return [Example(_field(r, text, where)) for r in records]
    raise CliError(
        f"{where}: records have fields {names}; name the prompt and answer fields with --prompt-field and "
        "--answer-field, or a text field with --text-field."
    )


def _first_present(candidates: Sequence[str], names: Sequence[str]) -> str | None:
    return next((c for c in candidates if c in names), None)


def _field(record: dict[str, Any], name: str, where: str) -> str:
    if name not in record or record[name] is None:
        raise CliError(f"{where}: a record has no field {name!r} (fields: {sorted(record)}).")
    return str(record[name])


def load_examples(path: str, fields: Fields, eval_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """``(train, eval)`` examples from a file or directory; a lone file is split with ``eval_fraction``."""
    if not os.path.exists(path):
        raise CliError(f"--data {path}: no such file or directory.")
    if os.path.isdir(path):
        splits = _read_directory(path)
    else:
        splits = {"train": read_records(path)}
    train = to_examples(splits["train"], fields, f"{path} (train)")
    eval_name = next((s for s in EVAL_SPLITS if s in splits), None)
    if eval_name is not None:
        return train, to_examples(splits[eval_name], fields, f"{path} ({eval_name})")
    return split_examples(train, eval_fraction, seed)


def _read_directory(path: str) -> dict[str, list[dict[str, Any]]]:
    if any(os.path.exists(os.path.join(path, f)) for f in ("dataset_info.json", "dataset_dict.json", "state.json")):
        return _read_saved_dataset(path)
    splits: dict[str, list[dict[str, Any]]] = {}
    for name in sorted(os.listdir(path)):
        stem, suffix = os.path.splitext(name)
        if suffix.lower() in SUFFIXES and stem in ("train", *EVAL_SPLITS):
            splits[stem] = read_records(os.path.join(path, name))
    if "train" not in splits:
        raise CliError(
            f"--data {path}: a data directory needs train.jsonl (or .json/.csv/.tsv/.txt) and optionally "
            "test.*, or a dataset saved with datasets' save_to_disk."
        )
    return splits


def _read_saved_dataset(path: str) -> dict[str, list[dict[str, Any]]]:
    try:
        import datasets
    except ImportError:
        raise CliError(
            f"--data {path} is a `datasets` dataset, but `datasets` is not installed: pip install datasets."
        ) from None
    loaded = datasets.load_from_disk(path)
    if isinstance(loaded, datasets.DatasetDict):
        splits = {name: list(split) for name, split in loaded.items()}
        if "train" not in splits:
            first = next(iter(splits))
            splits["train"] = splits.pop(first)
        return splits
    return {"train": list(loaded)}


def split_examples(examples: list[Example], eval_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Shuffle with ``seed`` and hold out ``eval_fraction`` of the examples (at least one, at most 500)."""
    if not 0.0 < eval_fraction < 1.0:
        raise CliError(f"--eval-fraction must be between 0 and 1 (exclusive), got {eval_fraction}.")
    if len(examples) < 2:
        raise CliError("need at least 2 examples to hold one out for evaluation.")
    order = list(examples)
    random.Random(seed).shuffle(order)
    n_eval = min(500, max(1, round(len(order) * eval_fraction)))
    return order[n_eval:], order[:n_eval]


# -- tokenising and batching -----------------------------------------------------------------------
def encode(example: Example, tokenizer: Any, max_length: int) -> dict[str, list[int]]:
    """Token ids and labels of one example: ``prompt`` (with the tokenizer's special tokens) + ``answer``
    + EOS. Labels are ``-100`` on the prompt, so the loss (and what the model learns) is the answer's."""
    prompt_ids = list(tokenizer(example.prompt, add_special_tokens=True)["input_ids"])
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if example.answer is None:
        ids = prompt_ids + eos
        labels = list(ids)
    else:
        answer_ids = list(tokenizer(example.answer, add_special_tokens=False)["input_ids"]) + eos
        ids = prompt_ids + answer_ids
        labels = [IGNORE_INDEX] * len(prompt_ids) + answer_ids
    return {"input_ids": ids[:max_length], "labels": labels[:max_length]}


def pad_batch(rows: Sequence[dict[str, list[int]]], pad_id: int, left: bool = False) -> dict[str, torch.Tensor]:
    """Pad ``input_ids`` (with ``pad_id``) and ``labels`` (with -100) to one length; add ``attention_mask``.

    Returns:
        ``input_ids``, ``attention_mask`` and (when the rows have them) ``labels``, each ``[batch, length]``.
    """
    length = max(len(r["input_ids"]) for r in rows)
    batch: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
    for row in rows:
        pad = length - len(row["input_ids"])
        parts = {
            "input_ids": (row["input_ids"], [pad_id] * pad),
            "attention_mask": ([1] * len(row["input_ids"]), [0] * pad),
            "labels": (row.get("labels", []), [IGNORE_INDEX] * pad),
        }
        for key, (values, filler) in parts.items():
            batch[key].append(filler + values if left else values + filler)
    if "labels" not in rows[0]:
        del batch["labels"]
    return {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}


class EncodedDataset(torch.utils.data.Dataset):
    """Examples tokenised once, served as dicts of id lists (the Trainer's collator pads them)."""

    def __init__(self, examples: Sequence[Example], tokenizer: Any, max_length: int) -> None:
        self.rows = [encode(e, tokenizer, max_length) for e in examples]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.rows[index]
