"""The method table of the adapter-state contract: one row per method config, so that a new method added here
inherits every test of ``test_adapter_state.py`` (disable / enable, nested disabling, adding and loading
frozen and trainable adapters in every order, deleting the active adapter) for each model style it supports.

Each row builds a fresh tiny model (fixed seed: the same base weights every time) and adapters that really
change the output (random LoRA ``B``, IA3 vectors, AdaLoRA, LoHa and LoKr factors; prompts are random by construction).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tests._tiny import build
from torch import nn

import peftkit as peft

#: Tokens of the contract inputs (``(2, 7)``, no padding).
SEQ_LEN = 7


@dataclass
class MethodCase:
    """One method config on a tiny model.

    Attributes:
        name: Test id.
        kind: Model kind for ``tests._tiny.build``.
        make_config: ``(**overrides) -> config`` of the first adapter (further adapters use the same).
        prompt: A prompt method (no adapter layers; the transformers model methods do not apply).
        one_trainable: At most one adapter may train at a time (AdaLoRA): adding or loading a second trainable
            one is refused.
    """

    name: str
    kind: str
    make_config: Callable[..., peft.PeftConfig]
    prompt: bool = False
    one_trainable: bool = False

    def base(self) -> nn.Module:
        return build(self.kind)

    def config(self, **overrides: Any) -> peft.PeftConfig:
        return self.make_config(**overrides)

    def inputs(self) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(3)
        return {"input_ids": torch.randint(2, 64, (2, SEQ_LEN), generator=gen)}


def with_adapter(case: MethodCase, adapter: str = "default", seed: int = 5) -> peft.PeftModel:
    """A fresh base model with one random, trainable adapter of ``case`` named ``adapter``."""
    model = peft.get_peft_model(case.base(), case.config(), adapter_name=adapter)
    randomise(model, adapter, seed)
    return model


def output(model: nn.Module, inputs: dict[str, torch.Tensor], **kwargs: Any) -> torch.Tensor:
    """The logits of a forward without autograd (``kwargs``: e.g. ``adapter_names``)."""
    with torch.no_grad():
        return model(**inputs, **kwargs).logits


def randomise(model: nn.Module, adapter: str, seed: int = 5) -> None:
    """Move ``adapter``'s tensors away from their (identity) initialisation so it changes the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if f".{adapter}." in f".{name}." and "ranknum" not in name:
                param.add_(0.3 * torch.randn(param.shape, generator=gen))


def adapter_tensors(model: nn.Module, adapter: str) -> set[str]:
    """Names of the tensors of ``adapter`` that can train: its factors / vectors / encoder and its
    modules_to_save copies (AdaLoRA's ``ranknum`` is a constant, never trained)."""
    return {name for name, _ in model.named_parameters() if f".{adapter}." in f".{name}." and "ranknum" not in name}


def trainable(model: nn.Module) -> set[str]:
    return {name for name, param in model.named_parameters() if param.requires_grad}


def expected_trainable(model: nn.Module, adapters: set[str]) -> set[str]:
    """The tensors that must train when exactly ``adapters`` train."""
    return set().union(*(adapter_tensors(model, name) for name in adapters)) if adapters else set()


def _lora(**kw: Any) -> peft.LoraConfig:
    base = {"task_type": "CAUSAL_LM", "r": 4, "target_modules": ["q_proj", "v_proj"], "modules_to_save": ["lm_head"]}
    return peft.LoraConfig(**{**base, "init_lora_weights": False, **kw})


def _ia3(**kw: Any) -> peft.IA3Config:
    targets = {"target_modules": ["k_proj", "v_proj", "down_proj"], "feedforward_modules": ["down_proj"]}
    return peft.IA3Config(**{"task_type": "CAUSAL_LM", **targets, "modules_to_save": ["lm_head"], **kw})


def _adalora(**kw: Any) -> peft.AdaLoraConfig:
    base = {"task_type": "CAUSAL_LM", "target_modules": ["q_proj", "v_proj"], "init_r": 4, "target_r": 2}
    return peft.AdaLoraConfig(**{**base, "total_step": 10, "modules_to_save": ["lm_head"], **kw})


def _loha(**kw: Any) -> peft.LoHaConfig:
    base = {"task_type": "CAUSAL_LM", "r": 2, "alpha": 3, "target_modules": ["q_proj", "v_proj"]}
    return peft.LoHaConfig(**{**base, "modules_to_save": ["lm_head"], **kw})


def _lokr(**kw: Any) -> peft.LoKrConfig:
    base = {"task_type": "CAUSAL_LM", "r": 2, "alpha": 3, "target_modules": ["q_proj", "down_proj"]}
    return peft.LoKrConfig(**{**base, "decompose_both": True, "modules_to_save": ["lm_head"], **kw})


def _vera(**kw: Any) -> peft.VeraConfig:
    base = {"task_type": "CAUSAL_LM", "r": 4, "target_modules": ["q_proj", "v_proj", "down_proj"]}
    return peft.VeraConfig(**{**base, "init_weights": False, "modules_to_save": ["lm_head"], **kw})


def _ln_tuning(**kw: Any) -> peft.LNTuningConfig:
    base = {"task_type": "CAUSAL_LM", "target_modules": ["input_layernorm", "norm"]}
    return peft.LNTuningConfig(**{**base, "modules_to_save": ["lm_head"], **kw})


def _trainable_tokens(**kw: Any) -> peft.TrainableTokensConfig:
    return peft.TrainableTokensConfig(**{"task_type": "CAUSAL_LM", "token_indices": [3, 7, 11, 20, 42], **kw})


def _oft(**kw: Any) -> peft.OFTConfig:
    base = {"task_type": "CAUSAL_LM", "target_modules": ["q_proj", "v_proj"], "oft_block_size": 4, "r": 0}
    return peft.OFTConfig(**{**base, "modules_to_save": ["lm_head"], **kw})


def _boft(**kw: Any) -> peft.BOFTConfig:
    base = {"task_type": "CAUSAL_LM", "target_modules": ["q_proj", "v_proj"], "boft_block_size": 4}
    return peft.BOFTConfig(**{**base, "boft_n_butterfly_factor": 2, "modules_to_save": ["lm_head"], **kw})


def _prompt_tuning(**kw: Any) -> peft.PromptTuningConfig:
    return peft.PromptTuningConfig(**{"task_type": "CAUSAL_LM", "num_virtual_tokens": 3, **kw})


def _prefix_tuning(**kw: Any) -> peft.PrefixTuningConfig:
    return peft.PrefixTuningConfig(**{"task_type": "CAUSAL_LM", "num_virtual_tokens": 3, **kw})


def _p_tuning(**kw: Any) -> peft.PromptEncoderConfig:
    base = {"task_type": "SEQ_CLS", "num_virtual_tokens": 3, "encoder_hidden_size": 8}
    return peft.PromptEncoderConfig(**{**base, **kw})


METHOD_CASES = [
    MethodCase("lora", "llama", _lora),
    MethodCase("ia3", "llama", _ia3),
    MethodCase("adalora", "llama", _adalora, one_trainable=True),
    MethodCase("loha", "llama", _loha),
    MethodCase("lokr", "llama", _lokr),
    MethodCase("vera", "llama", _vera),
    MethodCase("ln_tuning", "llama", _ln_tuning),
    MethodCase("trainable_tokens", "llama", _trainable_tokens),
    MethodCase("oft", "llama", _oft),
    MethodCase("boft", "llama", _boft),
    MethodCase("prompt_tuning", "llama", _prompt_tuning, prompt=True),
    MethodCase("prefix_tuning", "llama", _prefix_tuning, prompt=True),
    MethodCase("p_tuning", "llama_seq_cls", _p_tuning, prompt=True),
]

#: Methods with adapter layers (merging, mixed batches, transformers' ``model.add_adapter``).
LAYER_CASES = [c for c in METHOD_CASES if not c.prompt]
