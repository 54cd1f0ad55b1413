"""Rebuild the model and data that ship with peftkit for ``peftkit train`` (run from the repository root).

    python scripts/build_tiny_lm.py            # writes src/peftkit/data/{tiny-lm,reverse}/

What it makes, deterministically (fixed seeds, one CPU thread, deterministic kernels; the same bytes for a
given torch version and CPU):

* ``tiny-lm/``: a character-level tokenizer (printable ASCII + <pad> <bos> <eos> <unk>) and a 4-layer
  Llama (hidden 128, ~0.7M parameters, 2.7 MB) built from a ``LlamaConfig`` and pretrained in full to
  repeat a word: ``"plomek="`` -> ``"plomek"`` (random lowercase strings of 3 to 8 letters).
* ``reverse/``: question/answer pairs ``"plomek="`` -> ``"kemolp"`` on made-up pronounceable words (no
  palindromes), ``train.jsonl`` (800) and ``test.jsonl`` (200), disjoint. ``peftkit train`` teaches the
  model to spell words backwards with LoRA: the base model gets ~0% of them right, the adapter most.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import string
import time

import torch

from peftkit.cli.evaluate import evaluate
from peftkit.cli.examples import EncodedDataset, Example, pad_batch

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
README = (
    "Built by `python scripts/build_tiny_lm.py` (peftkit repository) for `peftkit train`; see that script.\n\n"
    "* `tiny-lm/`: a 4-layer character-level Llama pretrained to repeat a word (`plomek=` -> `plomek`).\n"
    "* `reverse/`: word-reversal pairs (`plomek=` -> `kemolp`) that `peftkit train` teaches it with LoRA.\n"
)
SEED = 0


def build_tokenizer() -> object:
    """A character-level tokenizer: one token per printable ASCII character; ``<bos>`` before every text."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate([*SPECIALS, *(chr(c) for c in range(32, 127))])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


def build_model(vocab_size: int) -> torch.nn.Module:
    """The tiny Llama, randomly initialised with a fixed seed."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(SEED)
    return LlamaForCausalLM(config)


def random_word(rng: random.Random) -> str:
    """3 to 8 random lowercase letters."""
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 8)))


def repeating(n: int) -> list[Example]:
    """The pretraining task: ``"<word>="`` -> ``"<word>"`` for ``n`` random words."""
    rng = random.Random(SEED)
    return [Example(f"{w}=", w) for w in (random_word(rng) for _ in range(n))]


def pronounceable_word(rng: random.Random) -> str:
    """A made-up word of 2-3 consonant-vowel syllables, sometimes with a closing consonant (4-7 letters)."""
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    word = "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(rng.randint(2, 3)))
    return word + (rng.choice(consonants) if rng.random() < 0.5 else "")


def reversing(n_train: int, n_test: int) -> tuple[list[Example], list[Example]]:
    """Disjoint train/test sets of ``"<word>="`` -> ``"<word backwards>"`` (palindromes left out)."""
    rng = random.Random(SEED)
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < n_train + n_test:
        word = pronounceable_word(rng)
        if word not in seen and word != word[::-1]:
            seen.add(word)
            words.append(word)
    pairs = [Example(f"{w}=", w[::-1]) for w in words]
    return pairs[:n_train], pairs[n_train:]


def pretrain(model: torch.nn.Module, tokenizer: object, examples: list[Example], steps: int, batch: int) -> None:
    """Full-parameter AdamW on the answers of ``examples``: lr 3e-3, 100 warm-up steps, cosine decay."""
    rows = EncodedDataset(examples, tokenizer, max_length=64).rows
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / steps))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    rng = random.Random(SEED)
    model.train()
    start = time.time()
    for step in range(steps):
        loss = model(**pad_batch(rng.sample(rows, batch), pad_id=0)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % 250 == 0 or step == steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - start:6.0f}s", flush=True)


def _portable_tokenizer_config(path: str) -> None:
    """Name the generic fast-tokenizer class, which every transformers version since 4 loads."""
    with open(path, encoding="utf-8") as fh:
        config = json.load(fh)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(config, fh, indent=2, sort_keys=True)
        fh.write("\n")


def write_jsonl(path: str, examples: list[Example]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for e in examples:
            fh.write(json.dumps({"prompt": e.prompt, "answer": e.answer}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join("src", "peftkit", "data"), help="data folder to write into")
    parser.add_argument("--steps", type=int, default=1000, help="pretraining steps (default 1000)")
    parser.add_argument("--batch-size", type=int, default=64, help="pretraining batch size (default 64)")
    parser.add_argument("--train-size", type=int, default=800, help="reversal training pairs (default 800)")
    parser.add_argument("--test-size", type=int, default=200, help="reversal test pairs (default 200)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer))
    pretrain(model, tokenizer, repeating(20000), args.steps, args.batch_size)
    train, test = reversing(args.train_size, args.test_size)
    rng = random.Random(SEED + 1)
    probe = [Example(f"{w}=", w) for w in (random_word(rng) for _ in range(200))]
    for name, examples in (("repeat (new words)", probe), ("reverse (test)", test)):
        scores = evaluate(model, tokenizer, examples, max_length=64, max_new_tokens=10)
        print(f"{name:18s} loss {scores.loss:.3f}  exact match {scores.exact_match:.1%}")

    model_dir = os.path.join(args.out, "tiny-lm")
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    _portable_tokenizer_config(os.path.join(model_dir, "tokenizer_config.json"))
    data_dir = os.path.join(args.out, "reverse")
    os.makedirs(data_dir, exist_ok=True)
    write_jsonl(os.path.join(data_dir, "train.jsonl"), train)
    write_jsonl(os.path.join(data_dir, "test.jsonl"), test)
    for folder in (model_dir, data_dir):
        with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as fh:
            fh.write(README)
    print(f"wrote {model_dir} and {data_dir}")


if __name__ == "__main__":
    main()
