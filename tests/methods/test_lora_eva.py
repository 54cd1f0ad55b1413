"""EVA against its formula on fresh random data: the incremental PCA equals the SVD of all rows seen (centred),
the rank redistribution hands the budget to the largest explained-variance ratios, a given ``eva_state_dict`` is
written into ``A`` with layers resized (alpha scaled by ``r' / r``), removed at rank 0 or re-initialised when
missing (with a warning) and the config rewritten to match; the data-driven ``A`` has orthonormal rows, ``B = 0``,
the model starts equal to its base, saves and reloads; refusals and the config checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests._tiny import build_model, model_output

import peftkit
from peftkit import EvaConfig, LoraConfig
from peftkit.errors import ConfigError, UsageError
from peftkit.methods.lora.eva_driver import eva_rank_counts
from peftkit.methods.lora.incremental_pca import IncrementalPCA

Q0, DOWN0 = "base_model.model.model.layers.0.self_attn.q_proj", "base_model.model.model.layers.0.mlp.down_proj"


def _batches(n: int = 6) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(4)
    return [{"input_ids": torch.randint(0, 64, (4, 16), generator=gen)} for _ in range(n)]


def _model(**eva: float) -> peftkit.PeftModel:
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"], init_lora_weights="eva", eva_config=EvaConfig(**eva)
    )
    return peftkit.get_peft_model(build_model("llama"), config)


def test_incremental_pca_equals_the_svd_of_all_rows() -> None:
    gen = torch.Generator().manual_seed(0)
    mix = torch.randn(10, 10, generator=gen, dtype=torch.float64)
    batches = [torch.randn(25, 10, generator=gen, dtype=torch.float64) @ mix for _ in range(3)]
    pca = IncrementalPCA(n_components=10)  # all components: exact (fewer truncate between batches)
    for batch in batches:
        pca.partial_fit(batch)
    rows = torch.cat(batches)
    centred = rows - rows.mean(0)
    _, S, Vh = torch.linalg.svd(centred, full_matrices=False)
    torch.testing.assert_close(pca.mean_, rows.mean(0))
    torch.testing.assert_close(pca.var_, rows.var(0, unbiased=False))
    torch.testing.assert_close(pca.singular_values_, S)
    torch.testing.assert_close(pca.components_.abs(), Vh.abs())  # the same directions, up to sign
    torch.testing.assert_close(pca.explained_variance_ratio_, S**2 / (S**2).sum())


def test_rank_redistribution_takes_the_largest_ratios() -> None:
    ratios = {"a": torch.tensor([0.5, 0.1, 0.05]), "b": torch.tensor([0.3, 0.2, 0.01])}
    assert eva_rank_counts(ratios, {"a": "a", "b": "b"}, {}, budget=3) == {"a": 1, "b": 2}
    # 'c' shares 'a''s input: its ratios count too, and the hook layer 'a' gets the larger count of the two
    counts = eva_rank_counts({"a": ratios["a"]}, {"a": "a", "c": "a"}, {"c": "a"}, budget=3)
    assert counts == {"a": 2, "c": 1}


def test_given_state_dict_resizes_removes_and_rewrites_the_config() -> None:
    model = _model()
    in_q = model.get_submodule(Q0).in_features
    factor = torch.linalg.qr(torch.randn(in_q, 2))[0].T  # rank 2 instead of 4
    state = {Q0: factor, DOWN0: torch.zeros(0, model.get_submodule(DOWN0).in_features)}
    with pytest.warns(UserWarning, match="no EVA factors"):
        peftkit.initialize_lora_eva_weights(model, eva_state_dict=state)
    layer = model.get_submodule(Q0)
    torch.testing.assert_close(layer.lora_A["default"].weight, factor)
    assert torch.equal(layer.lora_B["default"].weight, torch.zeros(layer.out_features, 2))
    assert layer.scaling["default"] == pytest.approx(8 * (2 / 4) / 2)  # alpha * r'/r over r': alpha / r kept
    assert layer.lora_A["default"].weight.requires_grad
    assert not hasattr(model.get_submodule(DOWN0), "lora_A")  # rank 0: the adapter is gone from that layer
    config = model.peft_config["default"]
    assert config.rank_pattern == {"model.layers.0.self_attn.q_proj": 2}
    assert config.alpha_pattern == {"model.layers.0.self_attn.q_proj": 4.0}
    assert sorted(config.target_modules) == [  # layer 1 had no factors: re-initialised as plain LoRA, kept
        "model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj", "model.layers.1.self_attn.q_proj",
    ]  # fmt: skip


def test_data_driven_factors_start_at_the_base_and_round_trip(tmp_path: Path) -> None:
    model = _model(tau=0.9)
    peftkit.initialize_lora_eva_weights(model, _batches(), show_progress_bar=False)
    ranks = {name: m.r["default"] for name, m in model.named_modules() if hasattr(m, "lora_A")}
    assert sum(ranks.values()) == 4 * 4 and max(ranks.values()) <= 8  # the budget, at most rho * r per layer
    for name in ranks:
        A = model.get_submodule(name).lora_A["default"].weight
        torch.testing.assert_close(A @ A.T, torch.eye(A.shape[0]), atol=1e-4, rtol=0)  # principal directions
    ids = {"input_ids": _batches(1)[0]["input_ids"]}
    torch.testing.assert_close(model_output(model, ids), model_output(build_model("llama"), ids))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    model.save_pretrained(tmp_path)
    loaded = peftkit.PeftModel.from_pretrained(build_model("llama"), tmp_path)
    torch.testing.assert_close(model_output(loaded, ids), model_output(model, ids))


def test_refusals() -> None:
    with pytest.raises(UsageError, match="PEFT model"):
        peftkit.initialize_lora_eva_weights(build_model("llama"), _batches())
    with pytest.raises(UsageError, match="empty"):
        peftkit.initialize_lora_eva_weights(_model(), [])
    with pytest.raises(UsageError, match="dataloader or an eva_state_dict"):
        peftkit.initialize_lora_eva_weights(_model())
    plain = peftkit.get_peft_model(build_model("llama"), LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(ConfigError, match="init_lora_weights='eva'"):
        peftkit.initialize_lora_eva_weights(plain, _batches())
    with pytest.raises(ConfigError, match="peft_config"):
        peftkit.get_eva_state_dict(build_model("llama"), _batches())
    with pytest.raises(UsageError, match="not EVA targets"):
        peftkit.initialize_lora_eva_weights(_model(), _batches(), prepare_layer_inputs_fn={"nope": lambda *a: a[0]})
    model = _model()
    hooks_before = {n: len(m._forward_hooks) for n, m in model.named_modules()}

    def broken(model: torch.nn.Module, inputs: dict) -> None:
        model(**inputs)
        raise RuntimeError("forward failed")

    with pytest.raises(RuntimeError, match="forward failed"):
        peftkit.initialize_lora_eva_weights(model, _batches(), forward_fn=broken, show_progress_bar=False)
    assert {n: len(m._forward_hooks) for n, m in model.named_modules()} == hooks_before


def test_config_checks_and_warnings() -> None:
    with pytest.raises(ConfigError, match="rho"):
        EvaConfig(rho=0.5)
    for tau in (-0.1, 1.1):
        with pytest.raises(ConfigError, match="tau"):
            EvaConfig(tau=tau)
    with pytest.warns(UserWarning, match="without a eva_config"):
        assert LoraConfig(init_lora_weights="eva").eva_config == EvaConfig()
    with pytest.warns(UserWarning, match="eva_config is only read"):
        LoraConfig(eva_config=EvaConfig())
    again = LoraConfig.from_dict(LoraConfig(init_lora_weights="eva", eva_config=EvaConfig(rho=3.0)).to_dict())
    assert again.eva_config == EvaConfig(rho=3.0)


def test_embedding_targets_keep_the_default_initialisation_with_a_warning() -> None:
    config = LoraConfig(r=4, target_modules=["q_proj", "embed_tokens"], init_lora_weights="eva", eva_config=EvaConfig())
    model = peftkit.get_peft_model(build_model("llama"), config)
    with pytest.warns(UserWarning, match=r"no EVA factors.*embed_tokens"):
        peftkit.initialize_lora_eva_weights(model, _batches(), show_progress_bar=False)
    embedding = model.base_model.model.model.embed_tokens
    assert torch.equal(embedding.lora_embedding_A["default"], torch.zeros_like(embedding.lora_embedding_A["default"]))
    assert embedding.lora_embedding_B["default"].abs().sum() > 0  # PEFT's embedding default: A = 0, B ~ N(0, 1)
    assert model.peft_config["default"].target_modules[-1] == "model.embed_tokens"
