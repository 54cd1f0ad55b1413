"""LN tuning compatibility with the reference peft 0.21.2: adapters saved by one library load in the other with
the same outputs (unmerged and merged); both save the same files and count the same parameters."""

from __future__ import annotations

import pytest
from tests.compat import _cross
from tests.compat._cross import Adapter, compat_tests

CASES = [
    Adapter("llama_defaults", "LNTuningConfig", {"task_type": "CAUSAL_LM"}),  # RMSNorm (weight only)
    Adapter("gpt2_defaults", "LNTuningConfig", {"task_type": "CAUSAL_LM"}, model="gpt2"),  # LayerNorm (+ bias)
    Adapter("explicit_other_name", "LNTuningConfig", {"target_modules": ["input_layernorm", "norm"]}, name="tuned"),
    Adapter("regex_modules_to_save", "LNTuningConfig", {"target_modules": r".*\.norm", "modules_to_save": ["lm_head"]}),
    Adapter(
        "bert_seq_cls", "LNTuningConfig", {"task_type": "SEQ_CLS", "target_modules": ["LayerNorm"]}, "bert_seq_cls"
    ),
]


@pytest.fixture(autouse=True)
def _reference_notice(monkeypatch: pytest.MonkeyPatch) -> None:
    """peft's own notice when it wraps a norm layer it has no in/out features for (RMSNorm, LayerNorm): about
    its wrapper, not the files."""
    monkeypatch.setattr(_cross, "PEFT_LOAD_NOTICES", (*_cross.PEFT_LOAD_NOTICES, "Unsupported layer type"))


# peft's notice while creating the adapters (see _reference_notice).
pytestmark = pytest.mark.filterwarnings("ignore:Unsupported layer type:UserWarning")

test_cross_load, test_saved_files_and_parameter_counts_match = compat_tests(CASES, CASES)
