"""IA3 compatibility with the reference peft 0.21.2: adapters saved by one library load in the other with the
same outputs (unmerged and merged); both save the same files and count the same parameters."""

from __future__ import annotations

import pytest
from tests.compat._cross import Adapter, compat_tests

CASES = [
    # llama's defaults: k_proj / v_proj scale their output, down_proj (feed-forward) its input.
    Adapter("llama_defaults", "IA3Config", {"task_type": "CAUSAL_LM"}),
    Adapter("gpt2_defaults", "IA3Config", {"task_type": "CAUSAL_LM"}, model="gpt2"),  # Conv1D, fan_in_fan_out
    Adapter(
        "llama_explicit",
        "IA3Config",
        {"target_modules": ["q_proj", "o_proj", "up_proj"], "feedforward_modules": ["up_proj"]},
        name="other",
    ),
    Adapter(
        "regex",
        "IA3Config",
        {"target_modules": r".*\.(v_proj|down_proj)", "feedforward_modules": r".*\.down_proj"},
    ),
    Adapter("modules_to_save", "IA3Config", {"modules_to_save": ["lm_head"]}),
    Adapter(
        "conv_attention", "IA3Config", {"target_modules": ["conv", "lin"], "feedforward_modules": ["lin"]}, "convnet"
    ),
    Adapter("conv_feedforward", "IA3Config", {"target_modules": ["conv"], "feedforward_modules": ["conv"]}, "convnet"),
]

# peft's own notices while *creating* GPT-2 adapters (Conv1D forces fan_in_fan_out); loading is checked.
pytestmark = pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to False:UserWarning")


test_cross_load, test_saved_files_and_parameter_counts_match = compat_tests(CASES, CASES)
