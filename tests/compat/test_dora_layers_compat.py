"""DoRA on embedding and convolution layers against the reference peft 0.21.2: saved by one library, loaded by
the other with the same outputs (unmerged and merged); same config JSON, tensor keys and shapes (the magnitude
is ``(dim,)`` for an embedding, ``(1, out, 1, 1)`` for a Conv2d), same parameter counts."""

from __future__ import annotations

import pytest
from tests.compat._cross import Adapter, compat_tests

CASES = [
    Adapter("embedding", "LoraConfig", {"r": 4, "target_modules": ["embed_tokens", "q_proj"], "use_dora": True}),
    Adapter(
        "conv2d_other_name",
        "LoraConfig",
        {"r": 2, "lora_alpha": 5, "target_modules": ["conv", "lin"], "use_dora": True},
        "convnet",
        name="other",
    ),
]

# peft's notice while saving an adapter that targets an embedding (its base weight is saved too).
pytestmark = pytest.mark.filterwarnings("ignore:Setting `save_embedding_layers` to `True`:UserWarning")

test_cross_load, test_saved_files_and_parameter_counts_match = compat_tests(CASES, CASES)
