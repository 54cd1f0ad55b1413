"""The seeds' transformers-first workflow end to end through peftkit's model methods, in a fresh subprocess,
once where ``import peft`` is impossible and once with the reference peft importable (whatever its version:
on the newest transformers it is older than transformers' own minimum, and peftkit's methods must not care).

Steps: add, set, active, enable / disable, delete, get_adapter_state_dict, save (adapter files only), load,
``from_pretrained`` of an adapter directory (peftkit's and transformers' Auto classes), hot-swap, and the
Trainer: train, resume (logged losses equal the uninterrupted run's), load the best checkpoint at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

BLOCK_PEFT = textwrap.dedent(
    """
    import importlib.abc
    import sys

    class BlockPeft(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "peft" or name.startswith("peft."):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, BlockPeft())
    sys.modules["peft"] = None  # `import peft` fails and importlib.util.find_spec("peft") is None
    """
)

WORKFLOW = textwrap.dedent(
    """
    import os
    import sys

    import torch
    from safetensors.torch import load_file
    from transformers.utils import is_peft_available

    assert is_peft_available() == PEFT_EXPECTED, is_peft_available()
    import peftkit

    peftkit.patch_transformers()
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained("base")
    model = AutoModelForCausalLM.from_pretrained("base")
    model.add_adapter(peftkit.LoraConfig(r=8, lora_alpha=32, init_lora_weights=False), adapter_name="my_adapter")
    model.add_adapter(peftkit.LoraConfig(r=16, lora_alpha=64, init_lora_weights=False), adapter_name="adapter_2")
    model.set_adapter("adapter_2")
    assert model.active_adapters() == ["adapter_2"]
    x = torch.randint(3, 64, (2, 6))
    model.eval()
    with torch.no_grad():
        adapted = model(x).logits
        model.disable_adapters()
        base = model(x).logits
        model.enable_adapters()
        assert torch.allclose(model(x).logits, adapted) and not torch.allclose(base, adapted)
    model.delete_adapter("my_adapter")
    assert not any("my_adapter" in key for key in model.state_dict())
    model.save_pretrained("out")
    assert sorted(os.listdir("out")) == ["adapter_config.json", "adapter_model.safetensors"]
    saved = load_file("out/adapter_model.safetensors")
    state = model.get_adapter_state_dict()
    assert {"base_model.model." + k for k in state} == set(saved)
    assert all(torch.equal(v, saved["base_model.model." + k]) for k, v in state.items())
    model.load_adapter("out", adapter_name="x")
    model.set_adapter("x")
    with torch.no_grad():
        assert torch.allclose(model(x).logits, adapted, atol=1e-6)
    for loaded in (peftkit.AutoModelForCausalLM.from_pretrained("out"), AutoModelForCausalLM.from_pretrained("out")):
        assert type(loaded).__name__ == "LlamaForCausalLM" and loaded.active_adapters() == ["default"]
        with torch.no_grad():
            assert torch.allclose(loaded(x).logits, adapted, atol=1e-6)

    swapper = AutoModelForCausalLM.from_pretrained("base")
    swapper.enable_peft_hotswap(target_rank=16)
    swapper.load_adapter("out")
    model.add_adapter(peftkit.LoraConfig(r=4, lora_alpha=3, init_lora_weights=False), adapter_name="small")
    model.set_adapter("small")
    model.save_pretrained("small")
    with torch.no_grad():
        small = model(x).logits
        swapper.load_adapter("small", hotswap=True, adapter_name="default")
        assert torch.allclose(swapper(x).logits, small, atol=1e-6) and not torch.allclose(small, adapted)

    class Data(torch.utils.data.Dataset):
        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            ids = torch.arange(3, 11) + i
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

    def trainer(output_dir, **extra):
        args = TrainingArguments(output_dir=output_dir, per_device_train_batch_size=2, save_steps=2, logging_steps=1,
                                 use_cpu=True, report_to=[], disable_tqdm=True, seed=1, **{"max_steps": 4, **extra})
        return Trainer(model=model, args=args, train_dataset=Data(8), eval_dataset=Data(2))

    def losses(run):
        return [e["loss"] for e in run.state.log_history if "loss" in e]

    model.set_adapter("adapter_2")
    model.train()
    full = trainer("ckpt")
    full.train()
    assert "model.safetensors" not in os.listdir("ckpt/checkpoint-2")
    resumed = trainer("ckpt")
    resumed.train(resume_from_checkpoint="ckpt/checkpoint-2")
    assert losses(resumed)[2:] == losses(full)[2:], (losses(full), losses(resumed))

    scores = iter(range(100, 0, -1))  # each evaluation scores lower: the first checkpoint is the best
    best_run = trainer("best", max_steps=6, eval_strategy="steps", eval_steps=2, load_best_model_at_end=True,
                       metric_for_best_model="order", greater_is_better=True)
    best_run.compute_metrics = lambda _: {"order": float(next(scores))}
    best_run.train()
    assert os.path.basename(best_run.state.best_model_checkpoint) == "checkpoint-2"
    best = load_file("best/checkpoint-2/adapter_model.safetensors")
    last = load_file("best/checkpoint-6/adapter_model.safetensors")
    state = model.get_adapter_state_dict()
    assert all(torch.equal(v, best["base_model.model." + k]) for k, v in state.items())
    assert not all(torch.equal(v, last["base_model.model." + k]) for k, v in state.items())
    if not PEFT_EXPECTED:
        assert sys.modules.get("peft") is None
    print("WORKFLOW OK")
    """
)


@pytest.mark.parametrize("peft_importable", [False, True], ids=["peft-blocked", "peft-installed"])
def test_seed_workflow_through_peftkit_methods(peft_importable: bool, tmp_path) -> None:
    if peft_importable:
        pytest.importorskip("peft")  # a test dependency; the blocked run covers machines without it
    script = ("" if peft_importable else BLOCK_PEFT) + f"PEFT_EXPECTED = {peft_importable}\n" + WORKFLOW
    (tmp_path / "script.py").write_text(script)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-W", "error::FutureWarning", "-W", "error::DeprecationWarning", "script.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "WORKFLOW OK" in result.stdout
