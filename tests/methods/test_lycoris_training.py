"""LoHa and LoKr while training (module dropout, rank dropout with and without rescaling, a loss that falls while
the base stays bit-identical), bad configs and targets (clear peftkit errors), and the command line
(``peftkit train --method loha/lokr``, ``peftkit inspect``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from tests._tiny import batch, build
from tests.methods._lycoris import one_layer

import peftkit as peft
from peftkit.cli.main import main

CONFIGS = {"loha": peft.LoHaConfig, "lokr": peft.LoKrConfig}


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_module_dropout_one_skips_the_adapter_while_training_only(method: str) -> None:
    base, model, x = one_layer("linear", CONFIGS[method](target_modules=["0"], r=1, module_dropout=1.0))
    adapted = model(x)
    assert not torch.allclose(adapted, base(x))
    model.train()
    torch.testing.assert_close(model(x), base(x), rtol=0, atol=0)


@pytest.mark.parametrize(("method", "scaled"), [("loha", True), ("lokr", False), ("lokr", True)])
def test_rank_dropout_drops_output_rows_of_delta_w(method: str, scaled: bool) -> None:
    """Each output row of ``delta W`` is kept or dropped; kept rows are multiplied by ``out / kept`` when the
    mask is rescaled (LoHa always; LoKr with ``rank_dropout_scale``), by 1 otherwise."""
    extra = {"rank_dropout_scale": True} if method == "lokr" and scaled else {}
    config = CONFIGS[method](target_modules=["0"], r=2, rank_dropout=0.5, **extra)
    base, model, x = one_layer("linear", config)
    full = model(x) - base(x)
    model.train()
    torch.manual_seed(3)
    dropped = model(x) - base(x)
    kept = [j for j in range(full.shape[-1]) if dropped[..., j].abs().max() > 1e-6]
    assert 0 < len(kept) < full.shape[-1], "seed 3 keeps some rows and drops others"
    factor = full.shape[-1] / len(kept) if scaled else 1.0
    for j in range(full.shape[-1]):
        expected = full[..., j] * factor if j in kept else torch.zeros_like(full[..., j])
        torch.testing.assert_close(dropped[..., j], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_training_lowers_the_loss_and_leaves_the_base_bit_identical(method: str) -> None:
    model = build("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = CONFIGS[method](task_type="CAUSAL_LM", r=2, alpha=4, target_modules=["q_proj", "v_proj", "down_proj"])
    model = peft.get_peft_model(model, config)
    inputs = batch("llama")
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(8):
        loss = model(**inputs).loss
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < losses[0] - 0.1
    after = model.get_base_model().state_dict()
    for key, tensor in before.items():
        stored = after.get(key, after.get(key.replace(key.rsplit(".", 1)[0], key.rsplit(".", 1)[0] + ".base_layer")))
        assert stored is not None and torch.equal(stored, tensor), key


BAD_CONFIGS: list[tuple[str, dict[str, Any], str]] = [
    ("loha", {"r": 0}, "LoHaConfig.r must be an integer from 1"),
    ("lokr", {"alpha": float("inf")}, "LoKrConfig.alpha must be a finite number"),
    ("loha", {"rank_dropout": 1.5}, "rank_dropout is a probability"),
    ("lokr", {"module_dropout": -0.1}, "module_dropout is a probability"),
    ("loha", {"init_weights": "lycoris"}, "LoHaConfig.init_weights must be true or false"),
    ("lokr", {"init_weights": "gaussian"}, "'lycoris'"),
    ("lokr", {"decompose_factor": 0}, "decompose_factor must be -1"),
    ("loha", {"rank_pattern": {"q_proj": 0}}, "rank_pattern['q_proj']"),
    ("lokr", {"alpha_pattern": {"(": 2}}, "invalid regular expression"),
    ("loha", {"layers_pattern": "layers"}, "layers_pattern is only used together with layers_to_transform"),
    ("lokr", {"use_effective_conv2d": "yes"}, "use_effective_conv2d must be true or false"),
]


@pytest.mark.parametrize(("method", "fields", "message"), BAD_CONFIGS)
def test_bad_configs_raise_clear_errors(method: str, fields: dict[str, Any], message: str) -> None:
    with pytest.raises(peft.ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        CONFIGS[method](target_modules=["q_proj"], **fields)


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_unsupported_targets_are_refused_and_leave_the_model_unchanged(method: str) -> None:
    model = build("gpt2")  # GPT-2's Conv1D projections: the reference refuses them too
    kinds = [type(m) for m in model.modules()]
    with pytest.raises(peft.TargetingError, match="is a Conv1D, which this method cannot adapt"):
        peft.get_peft_model(model, CONFIGS[method](target_modules=["c_attn"]))
    assert [type(m) for m in model.modules()] == kinds
    with pytest.raises(peft.TargetingError, match="is a Embedding, which this method cannot adapt"):
        peft.get_peft_model(build("llama"), CONFIGS[method](target_modules=["embed_tokens"]))


def test_cli_trains_and_inspects_lokr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    args = ["train", "--method", "lokr", "--r", "2", "--alpha", "4", "--decompose-both", "--rank-dropout", "0.1"]
    assert main([*args, "--target-modules", "q_proj,v_proj", "--max-steps", "2", "--output-dir", str(out)]) == 0
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["alpha"], config["decompose_both"]) == ("LOKR", 2, 4, True)
    assert config["rank_dropout"] == 0.1 and set(config["target_modules"]) == {"q_proj", "v_proj"}
    capsys.readouterr()
    assert main(["inspect", str(out / "adapter"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    loaded = peft.PeftModel.from_pretrained(
        __import__("transformers").AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"]),
        out / "adapter",
    )
    for row in report["modules"]:
        layer = loaded.base_model.model.get_submodule(row["module"])
        assert row["rank"] == 2
        assert row["delta_norm"] == pytest.approx(float(layer.delta_weight("default").detach().norm()), rel=1e-4)


def test_inspect_reports_loha_ranks_and_delta_norms(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = peft.LoHaConfig(r=2, alpha=3, target_modules=["q_proj", "down_proj"], rank_pattern={"down_proj": 3})
    model = peft.get_peft_model(build("llama"), config)
    with torch.no_grad():
        for param in (p for p in model.parameters() if p.requires_grad):
            param.add_(0.2)
    model.save_pretrained(tmp_path)
    capsys.readouterr()
    assert main(["inspect", str(tmp_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["modules"]
    assert len(rows) == 4
    for row in rows:
        layer = model.base_model.model.get_submodule(row["module"])
        assert row["rank"] == (3 if row["module"].endswith("down_proj") else 2)
        assert row["delta_norm"] == pytest.approx(float(layer.delta_weight("default").detach().norm()), rel=1e-4)


def test_peft_import_paths() -> None:
    from peftkit.tuners.loha import LoHaConfig, LoHaLayer, LoHaModel
    from peftkit.tuners.lokr import Conv2d, LoKrConfig, LoKrLayer

    assert (LoHaConfig, LoKrConfig) == (peft.LoHaConfig, peft.LoKrConfig)
    model = peft.get_peft_model(build("llama"), LoHaConfig(target_modules=["q_proj"]))
    assert isinstance(model.base_model, LoHaModel)
    assert isinstance(model.base_model.model.model.layers[0].self_attn.q_proj, LoHaLayer)
    assert issubclass(Conv2d, LoKrLayer)
