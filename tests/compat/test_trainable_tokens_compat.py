"""Trainable-tokens compatibility with the reference peft 0.21.2: adapters saved by one library load in the other
with the same outputs (unmerged and merged); both save the same files (a tied output head's copy of the rows
included) and count the same parameters."""

from __future__ import annotations

import warnings

import peft as reference
import pytest
import torch
from tests.compat._cross import Adapter, compat_tests
from tests.compat.test_scaled_embedding_compat import gemma3

import peftkit

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


@torch.no_grad()
def test_scaled_embedding_rows_are_scaled_like_the_lookup_and_match_peft() -> None:
    """Gemma 3 multiplies its lookup by ``embed_scale``: a trained row is scaled too (merged equals unmerged)."""
    config = {"token_indices": [3, 9, 40], "init_weights": False}
    ours = peftkit.get_peft_model(gemma3(), peftkit.TrainableTokensConfig(**config))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = reference.get_peft_model(gemma3(), reference.TrainableTokensConfig(**config))
    rows = ours.get_base_model().get_input_embeddings().trainable_tokens_delta["default"]
    ref.get_base_model().get_input_embeddings().trainable_tokens_delta["default"].copy_(rows)
    inputs = torch.tensor([[3, 9, 40, 5, 3, 2, 1]])
    expected = ref(input_ids=inputs).logits
    torch.testing.assert_close(ours(input_ids=inputs).logits, expected)
    assert not torch.allclose(gemma3()(input_ids=inputs).logits, expected, atol=1e-3)
    ours.merge_adapter()
    torch.testing.assert_close(ours(input_ids=inputs).logits, expected)
