"""``LoraConfig(trainable_token_indices=...)`` compatibility with the reference peft 0.21.2 (list and per-module
dict, tied and untied embeddings): adapters saved by one library load in the other with the same outputs (unmerged
and merged); both save the same files (``<embedding>.token_adapter.trainable_tokens_delta``, no copy for a tied
head) and count the same parameters."""

from __future__ import annotations

import pytest
from tests.compat._cross import Adapter, compat_tests

GPT2 = {"r": 2, "target_modules": ["c_attn"], "init_lora_weights": False}
LLAMA = {"r": 2, "target_modules": ["q_proj"], "init_lora_weights": False}
CASES = [
    Adapter("gpt2_tied_list", "LoraConfig", {**GPT2, "trainable_token_indices": [1, 5, 9]}, "gpt2"),
    Adapter("gpt2_tied_dict", "LoraConfig", {**GPT2, "trainable_token_indices": {"wte": [1, 5]}}, "gpt2", name="x"),
    Adapter("llama_list", "LoraConfig", {**LLAMA, "trainable_token_indices": [1, 12]}),
    Adapter(
        "llama_embedding_and_head",
        "LoraConfig",
        {**LLAMA, "trainable_token_indices": {"embed_tokens": [1, 12], "lm_head": [5]}},
    ),
]

# Merging into a tied table: peftkit cuts the tie first and says so (the merged model is checked).
# peft's notice while creating GPT-2 adapters (Conv1D forces fan_in_fan_out).
pytestmark = [
    pytest.mark.filterwarnings("ignore:Merging into tied weights:UserWarning"),
    pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to False:UserWarning"),
]

test_cross_load, test_saved_files_and_parameter_counts_match = compat_tests(CASES, CASES)
