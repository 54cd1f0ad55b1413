"""Trainable-tokens compatibility with the reference peft 0.21.2: adapters saved by one library load in the other
with the same outputs (unmerged and merged); both save the same files (a tied output head's copy of the rows
included) and count the same parameters."""

from __future__ import annotations

import pytest
from tests.compat._cross import Adapter, compat_tests

CASES = [
    Adapter("llama_default_target", "TrainableTokensConfig", {"token_indices": [1, 12, 40]}),
    Adapter("gpt2_tied_head", "TrainableTokensConfig", {"token_indices": [1, 5, 9], "init_weights": False}, "gpt2"),
    Adapter(
        "explicit_target_other_name",
        "TrainableTokensConfig",
        {"target_modules": ["embed_tokens"], "token_indices": [12, 5]},
        name="rows",
    ),
]

# Merging into a tied table: peftkit cuts the tie first and says so (the merged model is checked).
pytestmark = pytest.mark.filterwarnings("ignore:Merging into tied weights:UserWarning")

test_cross_load, test_saved_files_and_parameter_counts_match = compat_tests(CASES, CASES)
