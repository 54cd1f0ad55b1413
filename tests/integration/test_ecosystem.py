"""PEFT-style code with ``import peftkit`` runs through the real transformers ``Trainer``, accelerate and TRL
(SFT, DPO) as it does with the reference, with no opt-in beyond what the README's first example shows:

* ``peft-absent``: the reference is not installed (the subprocess's path finder does not see it);
  peftkit answers to ``peft`` by itself;
* ``peft-installed``: the reference is importable; ``peftkit.install_as_peft()`` (the README's one call for
  that case) makes peftkit answer to ``peft``.

Each mode runs in a fresh subprocess (the name ``peft`` is process-wide), on the 0.7M-parameter model that
ships with peftkit, a handful of steps each.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Without the reference: the path finder is replaced by one that does not see peft (``find_spec("peft")`` is
#: ``None`` and ``importlib.metadata`` knows no peft, as where it is not installed); the Trainer is imported
#: before peftkit on purpose (peftkit completes the names it binds from ``peft``).
WITHOUT_PEFT = textwrap.dedent(
    """
    import importlib.machinery, importlib.metadata, importlib.util, sys

    class PathFinderWithoutPeft:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name == "peft" or name.startswith("peft."):
                return None
            return importlib.machinery.PathFinder.find_spec(name, path, target)

        @staticmethod
        def find_distributions(context=importlib.metadata.DistributionFinder.Context()):
            if (context.name or "").lower() == "peft":
                return iter(())
            return importlib.machinery.PathFinder.find_distributions(context)

        @staticmethod
        def invalidate_caches():
            importlib.machinery.PathFinder.invalidate_caches()

    sys.meta_path[sys.meta_path.index(importlib.machinery.PathFinder)] = PathFinderWithoutPeft
    assert importlib.util.find_spec("peft") is None
    from transformers import Trainer
    import peftkit
    """
)
INSTALL_AS_PEFT = "import peftkit\npeftkit.install_as_peft()\n"

COMMON = textwrap.dedent(
    """
    import importlib.metadata, importlib.resources, os, sys
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import is_peft_available
    import peft
    import peftkit.tuners

    assert peft.PeftModel is peftkit.PeftModel and is_peft_available(), (peft, is_peft_available())
    from peft.tuners.tuners_utils import BaseTunerLayer

    assert BaseTunerLayer is peftkit.tuners.tuners_utils.BaseTunerLayer
    assert peft.__version__ == importlib.metadata.version("peft") == "0.21.2"
    try:  # a path peftkit lacks fails as it would without peft, never half from the reference
        import peft.tuners.xlora
    except ImportError:
        pass
    else:
        raise AssertionError("peft.tuners.xlora should not import")
    LM = str(importlib.resources.files("peftkit") / "data" / "tiny-lm")
    tok = AutoTokenizer.from_pretrained(LM)

    def lora_model(**fields):
        torch.manual_seed(0)
        config = peftkit.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", **fields)
        return peftkit.get_peft_model(AutoModelForCausalLM.from_pretrained(LM), config)
    """
)

TRAINER = textwrap.dedent(
    """
    from accelerate import Accelerator
    from accelerate.utils import extract_model_from_parallel, is_peft_model
    from safetensors.torch import load_file
    from transformers import BitsAndBytesConfig, Trainer, TrainingArguments

    model = lora_model()
    assert is_peft_model(model) and not is_peft_model(model.get_base_model())
    accelerator = Accelerator(cpu=True)
    prepared = accelerator.prepare(model)
    assert accelerator.unwrap_model(prepared) is model and extract_model_from_parallel(prepared) is model

    torch.manual_seed(0)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(3, 99, (16, 10))]

    def run(out, resume=None, max_steps=4, model=None):
        args = TrainingArguments(output_dir=out, max_steps=max_steps, save_steps=2, per_device_train_batch_size=4,
                                 logging_steps=1, report_to=[], use_cpu=True, seed=0, learning_rate=1e-2)
        trainer = Trainer(model=model or lora_model(), args=args, train_dataset=data)
        trainer.train(resume_from_checkpoint=resume)
        return trainer, [e["loss"] for e in trainer.state.log_history if "loss" in e]

    _, full = run("full")
    files = sorted(os.listdir("full/checkpoint-2"))
    assert "adapter_model.safetensors" in files and not any(f.startswith("model") for f in files), files
    assert all("lora_" in key for key in load_file("full/checkpoint-2/adapter_model.safetensors")), "adapter only"
    _, resumed = run("full", resume="full/checkpoint-2")
    # exact resume: steps 3-4 recomputed after the checkpoint give the uninterrupted run's losses
    assert len(full) == len(resumed) == 4 and resumed[2:] == full[2:], (resumed, full)

    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    quantized = AutoModelForCausalLM.from_pretrained(LM, quantization_config=bnb)
    quantized = peftkit.get_peft_model(peftkit.prepare_model_for_kbit_training(quantized),
                                       peftkit.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    _, losses = run("quantized", max_steps=2, model=quantized)  # a purely quantized model would be refused
    assert len(losses) == 2 and all(loss == loss for loss in losses)
    print("ECOSYSTEM OK")
    """
)

TRL = textwrap.dedent(
    """
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    words = ["plomek", "zuba", "vivani", "pedi"]
    common = dict(max_steps=2, per_device_train_batch_size=4, report_to=[], save_steps=2, use_cpu=True)

    # SFT, adapter from a peftkit config: TRL wraps the base with peftkit and trains only the adapter
    sft_data = Dataset.from_dict({"prompt": [w + "=" for w in words], "completion": [w[::-1] for w in words]})
    base = AutoModelForCausalLM.from_pretrained(LM)
    frozen = {k: v.clone() for k, v in base.state_dict().items()}
    trainer = SFTTrainer(model=base, args=SFTConfig(output_dir="sft", **common), train_dataset=sft_data,
                         processing_class=tok, peft_config=peftkit.LoraConfig(r=4, target_modules=["q_proj"]))
    assert isinstance(trainer.model, peftkit.PeftModel)
    trainer.train()
    inner = trainer.model.get_base_model()
    assert all(torch.equal(v, inner.state_dict()[k]) for k, v in frozen.items() if k in inner.state_dict())
    files = os.listdir("sft/checkpoint-2")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(files), files
    assert not any(f.startswith("model") for f in files), files
    # SFT on a PeftModel (the case that failed with TRL's fused head patched onto the wrapper)
    SFTTrainer(model=lora_model(), args=SFTConfig(output_dir="sft2", **common), train_dataset=sft_data,
               processing_class=tok).train()

    # DPO from a peftkit config: no reference copy; the reference log-probs are the adapter-disabled policy's,
    # i.e. what TRL computes from a separate copy of the base model passed as ref_model
    dpo_data = Dataset.from_dict({"prompt": [w + "=" for w in words], "chosen": [w[::-1] for w in words],
                                  "rejected": [w + w[0] for w in words]})
    lora = dict(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)

    def dpo(out, ref_model=None):
        torch.manual_seed(0)
        args = DPOConfig(output_dir=out, precompute_ref_log_probs=True, **common)
        return DPOTrainer(model=AutoModelForCausalLM.from_pretrained(LM), ref_model=ref_model, args=args,
                          train_dataset=dpo_data, processing_class=tok, peft_config=peftkit.LoraConfig(**lora))

    trainer = dpo("dpo")
    assert trainer.ref_model is None and isinstance(trainer.model, peftkit.PeftModel)
    trainer.train()
    copy = dpo("dpo-copy", ref_model=AutoModelForCausalLM.from_pretrained(LM))
    assert copy.ref_model is not None
    for column in ("ref_chosen_logps", "ref_rejected_logps"):
        ours, theirs = trainer.train_dataset[column], copy.train_dataset[column]
        assert torch.allclose(torch.tensor(ours), torch.tensor(theirs), atol=1e-4), (column, ours, theirs)
    with torch.no_grad():  # and the adapter does change the policy: the check above can fail
        ids = torch.tensor([trainer.train_dataset[0]["prompt_ids"] + trainer.train_dataset[0]["chosen_ids"]])
        adapted = trainer.model(ids).logits
        with trainer.model.disable_adapter():
            assert not torch.allclose(adapted, trainer.model(ids).logits)
    # DPO on a PeftModel: TRL keeps a frozen copy of the adapter as the reference, inside the same model
    model = lora_model()
    trainer = DPOTrainer(model=model, args=DPOConfig(output_dir="dpo2", **common), train_dataset=dpo_data,
                         processing_class=tok)
    assert trainer.ref_model is None and set(model.peft_config) == {"default", "ref"}
    trainer.train()
    print("ECOSYSTEM OK")
    """
)

MODES = {"peft-absent": WITHOUT_PEFT, "peft-installed": INSTALL_AS_PEFT}


def _run(tmp_path: Path, mode: str, body: str) -> None:
    if mode == "peft-installed":
        pytest.importorskip("peft")
    (tmp_path / "script.py").write_text(MODES[mode] + COMMON + body)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    command = [sys.executable, "script.py"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "ECOSYSTEM OK" in result.stdout


@pytest.mark.parametrize("mode", sorted(MODES))
def test_trainer_and_accelerate_without_opt_in(tmp_path: Path, mode: str) -> None:
    _run(tmp_path, mode, TRAINER)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_trl_sft_and_dpo(tmp_path: Path, mode: str) -> None:
    _run(tmp_path, mode, TRL)


def test_install_as_peft_refuses_once_the_reference_is_imported() -> None:
    pytest.importorskip("peft")  # imports the reference in this process
    import peftkit
    from peftkit.integrations.peft_alias import alias_installed

    with pytest.raises(peftkit.UsageError, match="before anything imports peft"):
        peftkit.install_as_peft()
    assert not alias_installed()
