"""``eager_frame``: under ``torch.compile`` the decorated entry point runs eagerly and what it calls compiles
(PeftModel.forward, the task classes' forward and the transformers mixin's ``__call__`` rely on it)."""

from __future__ import annotations

import torch
import torch._dynamo
from tests._tiny import VOCAB, llama_config
from torch._dynamo.testing import CompileCounter
from transformers import LlamaForCausalLM

import peftkit
from peftkit.compile_frames import eager_frame


def inner(x: torch.Tensor) -> torch.Tensor:
    return x.sin() + 1


@eager_frame
def outer(x: torch.Tensor) -> torch.Tensor:
    return inner(x * 2)


def test_the_decorated_frame_runs_eagerly_and_what_it_calls_compiles() -> None:
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(outer, backend=counter)
    x = torch.randn(5)
    for _ in range(3):
        torch.testing.assert_close(compiled(x), torch.sin(x * 2) + 1)
    assert counter.frame_count == 1  # inner, once
    assert counter.op_count == 2  # sin and add: outer's multiplication ran eagerly


def test_compiled_peft_model_compiles_the_model_once_and_matches_eager() -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    config = llama_config(layers=1)
    lora = peftkit.LoraConfig(task_type="CAUSAL_LM", r=2, target_modules="all-linear", init_lora_weights=False)
    model = peftkit.get_peft_model(LlamaForCausalLM(config), lora).eval()
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter)
    ids = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        for _ in range(3):
            torch.testing.assert_close(compiled(input_ids=ids).logits, expected)
    assert counter.frame_count == 1  # the base model's forward: the entry points add no graph of their own
