"""Property test: generated ``adapter_config.json`` contents either load or fail with a peftkit error, and the
model is exactly as it was afterwards.

The load path is the cheap one (``PeftConfig.from_dict`` on the parsed JSON, then injecting into a tiny model
without initialising, then undoing; prompt encoders are built on the meta device), so that 10,000 configs fit
in the unit suite.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from peftkit import functional as F
from peftkit.config import PeftConfig
from peftkit.errors import PeftkitError
from peftkit.methods.prompt.dimensions import fill_dimensions
from peftkit.methods.prompt.tuner import check_encoder_size
from peftkit.registry import method_of

#: 1,000 examples of 10 configs each: 10,000 configs (hypothesis' own cost per example dominates otherwise).
EXAMPLES, PER_EXAMPLE = 1_000, 10


class Tiny(nn.Module):
    """Module names of a llama-like block (and one Conv1d), 4 wide."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(model_type="llama", num_hidden_layers=1, hidden_size=4, num_attention_heads=2)
        self.embed_tokens = nn.Embedding(6, 4)
        self.layers = nn.ModuleList([nn.ModuleDict({"q_proj": nn.Linear(4, 4), "v_proj": nn.Linear(4, 4)})])
        self.conv = nn.Conv1d(4, 4, 1)
        self.lm_head = nn.Linear(4, 6)


BASES: dict[str, dict[str, Any]] = {
    "LORA": {"r": 2, "target_modules": ["q_proj", "v_proj"], "lora_alpha": 4},
    "ADALORA": {"init_r": 4, "target_r": 2, "total_step": 10, "target_modules": ["q_proj"]},
    "IA3": {"target_modules": ["q_proj", "v_proj"], "feedforward_modules": ["v_proj"]},
    "PROMPT_TUNING": {"num_virtual_tokens": 2, "task_type": "CAUSAL_LM"},
    "PREFIX_TUNING": {"num_virtual_tokens": 2, "task_type": "CAUSAL_LM", "prefix_projection": True},
    "P_TUNING": {"num_virtual_tokens": 2, "task_type": "CAUSAL_LM", "encoder_reparameterization_type": "LSTM"},
}
FIELDS = sorted(
    {"r", "lora_alpha", "target_modules", "exclude_modules", "rank_pattern", "alpha_pattern", "layers_to_transform",
     "layers_pattern", "modules_to_save", "init_lora_weights", "use_dora", "lora_bias", "bias", "fan_in_fan_out",
     "lora_dropout", "use_rslora", "feedforward_modules", "init_ia3_weights", "init_r", "target_r", "tinit", "tfinal",
     "deltaT", "beta1", "beta2", "total_step", "num_virtual_tokens", "token_dim", "num_layers", "num_attention_heads",
     "num_transformer_submodules", "encoder_hidden_size", "encoder_num_layers", "encoder_dropout", "prefix_projection",
     "prompt_tuning_init", "task_type", "peft_type", "inference_mode", "auto_mapping", "revision", "unknown_key"}
)  # fmt: skip
REGEX_BITS = ["(", ")", "[", "]", "*", "+", "?", "{2}", "\\", "|", ".*", "q_proj", "v_proj", "layers", "^", "$", "(?P<"]
NAMES = ["q_proj", "v_proj", "lm_head", "embed_tokens", "conv", "layers", "all-linear", "none", "MLP", "LSTM", ""]

DEEP = "__nested_{}__"  # stands for a list nested that deep, written into the JSON text directly
SCALARS: list[Any] = [
    None, True, False, -3, -1, 0, 1, 2, 3, 8, 2**20, 2**20 + 1, 2**31, 2**62, -(2**62), 0.0, 0.5, 1.0, -0.5, 1e308,
    float("nan"), float("inf"), float("-inf"), *NAMES, *REGEX_BITS, "q_proj|(", "layers\\.(0", ".*(q|v)_proj",
    "[a-z", "(?P<x>q)", "a{99999999999}", *(DEEP.format(d) for d in (10, 100, 940, 5000)),
]  # fmt: skip
scalars = st.sampled_from(SCALARS)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.sampled_from([*NAMES, *REGEX_BITS]), scalars, max_size=2),
    st.lists(st.lists(scalars, max_size=2), max_size=2),
)
configs = st.builds(
    lambda method, edits: {**BASES[method], "peft_type": method, **edits},
    st.sampled_from(sorted(BASES)),
    st.dictionaries(st.sampled_from(FIELDS), values, min_size=1, max_size=3),
)

MODEL = Tiny().eval()
SNAPSHOT = {k: v.clone() for k, v in MODEL.state_dict().items()}
TYPES = [type(m) for m in MODEL.modules()]
GRADS = [p.requires_grad for p in MODEL.parameters()]


def json_text(data: dict[str, Any]) -> str:
    text = json.dumps(data)
    for depth in (10, 100, 940, 5000):
        text = text.replace(json.dumps(DEEP.format(depth)), "[" * depth + "]" * depth)
    return text


def load(data: dict[str, Any], path: Path) -> None:
    """Read ``data`` as ``adapter_config.json`` content, build its config, apply it to ``MODEL``, undo.

    Texts with a deep list go through a real file (``from_json_file``, whose parser has its own depth limit).
    """
    text = json_text(data)
    if "[[[[[[[[[[" in text:
        path.write_text(text, encoding="utf-8")
        parsed = PeftConfig.from_json_file(path)
    else:
        parsed = json.loads(text)
    config = PeftConfig.from_dict(parsed)
    spec = method_of(config)
    if spec.is_prompt_learning:  # the encoder is built on the meta device: shapes checked, nothing allocated
        check_encoder_size(fill_dimensions(config, MODEL, spec.prompt_encoder.kv_prefix), spec.prompt_encoder)  # type: ignore[union-attr]
        return
    F.inject_adapter(MODEL, config, "fuzz", init_weights=False).undo(MODEL)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(batch=st.lists(configs, min_size=PER_EXAMPLE, max_size=PER_EXAMPLE))
def test_generated_configs_fail_only_with_peftkit_errors_and_leave_the_model_unchanged(batch, tmp_path_factory) -> None:
    path = tmp_path_factory.getbasetemp() / "adapter_config.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unknown keys and odd-but-valid values warn; the test is about raising
        for data in batch:
            try:
                load(data, path)
            except PeftkitError:
                pass
    assert [type(m) for m in MODEL.modules()] == TYPES
    for key, tensor in MODEL.state_dict().items():
        assert torch.equal(tensor, SNAPSHOT[key]), key
    assert [p.requires_grad for p in MODEL.parameters()] == GRADS
