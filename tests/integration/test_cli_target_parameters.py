"""``peftkit train --target-parameters`` (LoRA on parameters, two optimiser steps of the built-in job): the adapter
targets exactly the named parameters (no default modules, no dropout), reloads with equal outputs and its
per-parameter update is ``s * B A`` as ``peftkit inspect`` reports it; bad values give one clear line."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file
from tests.integration.test_cli import run_cli

PARAMS = "mlp.down_proj.weight, mlp.up_proj.weight"


def test_train_on_parameters_and_inspect(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = str(tmp_path / "run")
    code, stdout, err = run_cli(capsys, "train", "--target-parameters", PARAMS, "--max-steps", "2", "--output-dir", out)
    assert code == 0, stdout + err
    assert "on parameters mlp.down_proj.weight,mlp.up_proj.weight" in stdout and "reloaded: outputs equal" in stdout
    adapter = os.path.join(out, "adapter")
    with open(os.path.join(adapter, "adapter_config.json")) as fh:
        config = json.load(fh)
    assert config["target_parameters"] == ["mlp.down_proj.weight", "mlp.up_proj.weight"]
    assert (config["target_modules"], config["lora_dropout"]) == ([], 0.0)
    tensors = load_file(os.path.join(adapter, "adapter_model.safetensors"))
    modules = {k.rsplit(".lora_", 1)[0] for k in tensors}
    assert modules == {f"base_model.model.model.layers.{i}.mlp.{p}" for i in range(4) for p in ("down_proj", "up_proj")}
    code, raw, err = run_cli(capsys, "inspect", adapter, "--json")
    assert code == 0, err
    info = json.loads(raw)
    assert info["target_parameters"] == config["target_parameters"] and info["ranks"] == [config["r"]]
    row = next(r for r in info["modules"] if r["module"] == "model.layers.0.mlp.down_proj")
    key = "base_model.model.model.layers.0.mlp.down_proj"
    A, B = tensors[f"{key}.lora_A.weight"], tensors[f"{key}.lora_B.weight"]
    expected = config["lora_alpha"] / config["r"] * float((B @ A).norm())
    assert row["delta_norm"] == pytest.approx(expected, rel=1e-5) and expected > 0
    code, text, _ = run_cli(capsys, "inspect", adapter)
    assert "parameters of:  mlp.down_proj.weight, mlp.up_proj.weight" in text
    assert torch.count_nonzero(B) > 0  # training moved B off its zero initialisation


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dropout", "0.1"], "does not work with lora_dropout"),
        (["--target-parameters", "mlp.down_proj.weight,,x"], "'' is not a parameter name"),
        (["--target-parameters", "no.such.param"], "matched no parameter"),
        (["--method", "ia3"], "--target-parameters does not apply to --method ia3"),
    ],
    ids=["dropout", "empty-name", "no-match", "other-method"],
)
def test_bad_target_parameters_give_one_clear_line(extra: list[str], message: str, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    argv = ["train", "--target-parameters", PARAMS, *extra, "--max-steps", "1", "--output-dir", str(tmp_path)]
    code, _, err = run_cli(capsys, *argv)
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1
