"""``peftkit train --method vera|ln_tuning|trainable_tokens|loha`` and DoRA on an embedding (one optimiser step of the
built-in job) write an adapter that reloads with equal outputs, and ``peftkit inspect`` reads it."""

from __future__ import annotations

import json
import os

import pytest
from safetensors.torch import load_file
from tests.integration.test_cli import run_cli


@pytest.mark.parametrize(
    ("options", "peft_type", "key"),
    [
        (["--method", "vera", "--r", "8", "--d-initial", "0.2"], "VERA", "base_model.vera_A"),
        (["--method", "ln_tuning"], "LN_TUNING", "base_model.model.model.norm.ln_tuning_layers.weight"),
        (
            ["--method", "trainable_tokens", "--token-indices", "3,5,7"],
            "TRAINABLE_TOKENS",
            "base_model.model.model.embed_tokens.trainable_tokens_delta",
        ),
        (["--method", "loha", "--r", "4"], "LOHA", "base_model.model.model.layers.0.self_attn.q_proj.hada_w1_a"),
        (
            ["--target-modules", "embed_tokens", "--use-dora"],
            "LORA",
            "base_model.model.model.embed_tokens.lora_magnitude_vector",
        ),
    ],
    ids=["vera", "ln_tuning", "trainable_tokens", "loha", "dora_embedding"],
)
def test_train_and_inspect(options: list[str], peft_type: str, key: str, tmp_path, capsys) -> None:
    out = str(tmp_path / "run")
    code, stdout, err = run_cli(capsys, "train", *options, "--max-steps", "1", "--output-dir", out)
    assert code == 0, stdout + err
    assert "reloaded: outputs equal" in stdout
    adapter = os.path.join(out, "adapter")
    with open(os.path.join(adapter, "adapter_config.json")) as fh:
        assert json.load(fh)["peft_type"] == peft_type
    assert key in load_file(os.path.join(adapter, "adapter_model.safetensors"))
    code, raw, err = run_cli(capsys, "inspect", adapter, "--json")
    assert code == 0, err
    info = json.loads(raw)
    assert info["method"] == peft_type
    if peft_type in ("VERA", "LOHA"):
        assert info["ranks"] == [int(options[options.index("--r") + 1])]


def test_bad_token_indices_give_one_clear_line(tmp_path, capsys) -> None:
    options = ["--method", "trainable_tokens", "--token-indices", "3,x", "--output-dir", str(tmp_path)]
    code, _, err = run_cli(capsys, "train", *options)
    assert code == 2 and "--token-indices takes comma-separated token ids" in err
