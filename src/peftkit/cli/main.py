"""``peftkit`` command line: for now one command, ``demo``, the default (a LoRA fine-tune of a tiny model)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def demo(steps: int = 60, seed: int = 0) -> int:
    """Fine-tune LoRA on a tiny Llama built from a config to continue a counting pattern; save, reload, compare."""
    import tempfile

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import peftkit

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=32, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )
    base = LlamaForCausalLM(config)
    starts = torch.randint(0, 16, (64, 1))
    data = (starts + torch.arange(12)) % 32  # sequences counting up from a random start
    model = peftkit.get_peft_model(base, peftkit.LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16,
                                                             target_modules="all-linear"))
    model.print_trainable_parameters()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)

    def loss_of() -> float:
        model.eval()
        with torch.no_grad():
            return float(model(input_ids=data, labels=data).loss)

    before = loss_of()
    model.train()
    for step in range(steps):
        batch = data[torch.randint(0, len(data), (16,))]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 20 == 0:
            print(f"step {step:3d}  loss {loss.item():.3f}")
    after = loss_of()
    with tempfile.TemporaryDirectory() as out:
        model.save_pretrained(out)
        reloaded = peftkit.PeftModel.from_pretrained(LlamaForCausalLM(config).eval(), out)
        reloaded.get_base_model().load_state_dict(base.state_dict(), strict=False)
        with torch.no_grad():
            same = torch.allclose(reloaded(input_ids=data).logits, model(input_ids=data).logits, atol=1e-5)
    print(f"eval loss before {before:.3f} -> after {after:.3f}; reloaded adapter reproduces outputs: {same}")
    return 0 if after < before and same else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="peftkit", description="Parameter-efficient fine-tuning, PEFT-compatible.")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("demo", help="fine-tune LoRA on a tiny built-in model (the default)")
    run.add_argument("--steps", type=int, default=60, help="training steps (default 60)")
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    return demo(steps=getattr(args, "steps", 60))
