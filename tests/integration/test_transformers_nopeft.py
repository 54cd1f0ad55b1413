"""The transformers integration without the reference ``peft``: a subprocess in which importing ``peft`` is
impossible runs the model methods, from_pretrained detection, hot-swap and a Trainer checkpoint + resume."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import importlib.abc
    import os
    import sys

    class BlockPeft(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "peft" or name.startswith("peft."):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, BlockPeft())
    sys.modules["peft"] = None  # `import peft` fails and importlib.util.find_spec("peft") is None

    import torch
    from transformers.utils import is_peft_available

    assert not is_peft_available()
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
    model.save_pretrained("out")
    assert sorted(os.listdir("out")) == ["adapter_config.json", "adapter_model.safetensors"]
    model.load_adapter("out", adapter_name="x")
    for loaded in (peftkit.AutoModelForCausalLM.from_pretrained("out"), AutoModelForCausalLM.from_pretrained("out")):
        with torch.no_grad():
            assert torch.allclose(loaded(x).logits, adapted, atol=1e-6)

    swapper = AutoModelForCausalLM.from_pretrained("base")
    swapper.enable_peft_hotswap(target_rank=16)
    swapper.load_adapter("out")
    model.set_adapter("adapter_2")
    model.save_pretrained("out2")
    swapper.load_adapter("out2", hotswap=True)
    with torch.no_grad():
        assert torch.allclose(swapper(x).logits, adapted, atol=1e-6)

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            ids = torch.arange(3, 11) + i
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

    def run(**kwargs):
        args = TrainingArguments(output_dir="ckpt", per_device_train_batch_size=2, max_steps=4, save_steps=2,
                                 logging_steps=1, use_cpu=True, report_to=[], disable_tqdm=True, seed=1)
        trainer = Trainer(model=model, args=args, train_dataset=Data())
        trainer.train(**kwargs)
        return [e["loss"] for e in trainer.state.log_history if "loss" in e]

    model.train()
    full = run()
    assert "model.safetensors" not in os.listdir("ckpt/checkpoint-2")
    resumed = run(resume_from_checkpoint="ckpt/checkpoint-2")
    assert resumed[2:] == full[2:], (full, resumed)
    assert sys.modules.get("peft") is None
    print("NO-PEFT OK")
    """
)


def test_everything_runs_where_peft_cannot_be_imported(tmp_path) -> None:
    (tmp_path / "script.py").write_text(SCRIPT)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "script.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "NO-PEFT OK" in result.stdout
