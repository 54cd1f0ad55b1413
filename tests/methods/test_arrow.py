"""Arrow routing (``create_arrow_model``, ``ArrowConfig``) against its formula: prototypes are the experts' top right
singular vectors, each token mixes its ``top_k`` experts by a softmax of ``|p_e . x| / T``; GenKnowSub subtracts the
general adapters' mean factors once per expert; prototypes are cached until experts change; the router cannot be
merged; refusals name what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import peftkit
from peftkit.arrow import _resolve_adapter_source
from peftkit.errors import ArgumentTypeError, ConfigError, MergeError, UnsupportedError


def base(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 5))


def save_expert(directory: Path, seed: int, r: int = 2, targets: tuple[str, ...] = ("0", "2"), alpha: int = 4) -> str:
    """A LoRA expert whose ``B A`` has a clear top singular direction (so 15 power iterations converge)."""
    config = peftkit.LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False)
    model = peftkit.get_peft_model(base(), config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in (m for m in model.modules() if hasattr(m, "lora_arrow") or hasattr(m, "lora_A")):
            if "default" not in getattr(layer, "lora_A", {}):
                continue
            A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
            row_scale = 0.3 ** torch.arange(r, dtype=torch.float32)[:, None]  # rows 1, 0.3, 0.09, ...
            A.copy_(3 * torch.randn(A.shape, generator=gen) * row_scale)
            B.copy_(torch.randn(B.shape, generator=gen))
    model.save_pretrained(directory)
    return str(directory)


@pytest.fixture
def experts(tmp_path: Path) -> list[str]:
    return [save_expert(tmp_path / f"task{i}", seed=i, alpha=4 + i) for i in range(3)]


@pytest.fixture
def general(tmp_path: Path) -> list[str]:
    return [save_expert(tmp_path / f"gen{i}", seed=10 + i) for i in range(2)]


def expected_delta(layer: nn.Module, names: list[str], x: torch.Tensor, top_k: int, temperature: float) -> torch.Tensor:
    """``sum_e c_e s_e B_e A_e x`` with ``p_e`` from an exact SVD of ``B_e A_e``."""
    protos = torch.stack(
        [torch.linalg.svd(layer.lora_B[n].weight @ layer.lora_A[n].weight)[2][0] for n in names]  # type: ignore[index]
    )
    sim = (x @ protos.T).abs()
    top, index = sim.topk(top_k, dim=1)
    coeff = torch.softmax(torch.full_like(sim, float("-inf")).scatter(1, index, top) / temperature, dim=1)
    outs = torch.stack(
        [layer.scaling[n] * x @ (layer.lora_B[n].weight @ layer.lora_A[n].weight).T for n in names],  # type: ignore[index]
        dim=1,
    )
    return (coeff[:, :, None] * outs).sum(1)


def expected_output(
    model: nn.Module, names: list[str], x: torch.Tensor, top_k: int, temperature: float
) -> torch.Tensor:
    first, second = model.base_model.model[0], model.base_model.model[2]
    hidden = first.base_layer(x) + expected_delta(first, names, x, top_k, temperature)
    hidden = torch.tanh(hidden)
    return second.base_layer(hidden) + expected_delta(second, names, hidden, top_k, temperature)


@pytest.mark.parametrize(("top_k", "temperature"), [(1, 1.0), (2, 0.5), (3, 2.0)])
def test_forward_mixes_the_top_k_experts_per_token(experts: list[str], top_k: int, temperature: float) -> None:
    config = peftkit.ArrowConfig(top_k=top_k, router_temperature=temperature, rng_seed=0)
    model = peftkit.create_arrow_model(base(), experts, config).eval()
    assert model.active_adapter == "arrow_router"
    x = torch.randn(7, 8)
    with torch.no_grad():
        out = model(x)
        want = expected_output(model, ["task_0", "task_1", "task_2"], x, top_k, temperature)
    torch.testing.assert_close(out, want, atol=1e-4, rtol=1e-4)  # 15 power iterations vs an exact SVD
    assert config.task_adapter_names is None  # the caller's config is not changed


def test_genknowsub_purifies_each_expert_once(experts: list[str], general: list[str]) -> None:
    config = peftkit.ArrowConfig(top_k=2, use_gks=True, rng_seed=0)
    model = peftkit.create_arrow_model(base(), experts[:2], config, general_adapter_paths=general)
    layer = model.base_model.model[0]
    start = {n: (layer.lora_A[n].weight.clone(), layer.lora_B[n].weight.clone()) for n in layer.lora_A}
    mean_A = (start["gks_0"][0] + start["gks_1"][0]) / 2
    mean_B = (start["gks_0"][1] + start["gks_1"][1]) / 2
    x = torch.randn(4, 8)
    with torch.no_grad():
        model(x)
        model(x)  # a second forward subtracts nothing more
    for name in ("task_0", "task_1"):
        torch.testing.assert_close(layer.lora_A[name].weight, start[name][0] - mean_A)
        torch.testing.assert_close(layer.lora_B[name].weight, start[name][1] - mean_B)
    model.load_adapter(experts[2], adapter_name="late")
    with torch.no_grad():
        late_A = layer.lora_A["late"].weight.clone()
        out = model(x)
        want = expected_output(model, ["task_0", "task_1", "late"], x, 2, 1.0)
    torch.testing.assert_close(layer.lora_A["late"].weight, late_A - mean_A)
    torch.testing.assert_close(out, want, atol=1e-4, rtol=1e-4)  # 15 power iterations vs an exact SVD
    torch.testing.assert_close(layer.lora_A["task_0"].weight, start["task_0"][0] - mean_A)


def test_prototypes_are_cached_until_the_experts_change(experts: list[str]) -> None:
    model = peftkit.create_arrow_model(base(), experts[:2], peftkit.ArrowConfig(top_k=2, rng_seed=1)).eval()
    router = model.base_model.model[0].lora_arrow["arrow_router"]
    x = torch.randn(3, 8)
    with torch.no_grad():
        model(x)
        first = router.prototypes
        model(x)
        assert router.prototypes is first and first.shape == (2, 8)
        model.load_adapter(experts[2], adapter_name="task_2")
        model(x)
    assert router.prototypes.shape == (3, 8) and router.task_adapter_names == ["task_0", "task_1", "task_2"]
    model.delete_adapter("task_2")
    with torch.no_grad():
        model(x)
    assert router.task_adapter_names == ["task_0", "task_1"]
    model.set_adapter("task_0")
    model.delete_adapter("arrow_router")
    assert "arrow_router" not in model.base_model.model[0].lora_arrow
    assert all("arrow_router" not in key for key in model.state_dict())


def test_router_cannot_be_merged_but_an_expert_can_train(experts: list[str]) -> None:
    model = peftkit.create_arrow_model(base(), experts[:2], peftkit.ArrowConfig(top_k=2), is_trainable=True)
    with pytest.raises(MergeError, match="arrow"):
        model.merge_and_unload()
    with pytest.raises(RuntimeError):
        model.merge_adapter()
    model.set_adapter("task_0")
    model.train()
    model(torch.randn(4, 8)).pow(2).sum().backward()
    assert model.base_model.model[0].lora_A["task_0"].weight.grad is not None


def test_router_config_round_trips(experts: list[str], tmp_path: Path) -> None:
    model = peftkit.create_arrow_model(base(), experts[:2], peftkit.ArrowConfig(top_k=2, rng_seed=5))
    model.save_pretrained(tmp_path / "out", selected_adapters=["arrow_router"])
    written = json.loads((tmp_path / "out" / "arrow_router" / "adapter_config.json").read_text())["arrow_config"]
    assert written == {
        "top_k": 2,
        "router_temperature": 1.0,
        "use_gks": False,
        "task_adapter_names": ["task_0", "task_1"],
        "gks_adapter_names": [],
        "rng_seed": 5,
    }
    loaded = peftkit.LoraConfig.from_pretrained(tmp_path / "out" / "arrow_router")
    assert isinstance(loaded.arrow_config, peftkit.ArrowConfig)
    assert loaded.arrow_config.task_adapter_names == ["task_0", "task_1"] and loaded.arrow_config.rng_seed == 5


def test_refusals_name_what_is_wrong(experts: list[str], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least one"):
        peftkit.create_arrow_model(base(), [], peftkit.ArrowConfig())
    with pytest.raises(ConfigError, match="general_adapter_paths"):
        peftkit.create_arrow_model(base(), experts, peftkit.ArrowConfig(top_k=1, use_gks=True))
    with pytest.raises(ConfigError, match="top_k"):
        peftkit.create_arrow_model(base(), experts[:2], peftkit.ArrowConfig(top_k=3))
    rank4 = save_expert(tmp_path / "rank4", seed=5, r=4)
    with pytest.raises(ConfigError, match="rank mismatch"):
        peftkit.create_arrow_model(base(), [experts[0], rank4], peftkit.ArrowConfig(top_k=1))
    first_only = save_expert(tmp_path / "first", seed=6, targets=("0",))
    with pytest.raises(ConfigError, match="same modules"):
        peftkit.create_arrow_model(base(), [experts[0], first_only], peftkit.ArrowConfig(top_k=1))
    for options, field in [({"top_k": 0}, "top_k"), ({"router_temperature": 0.0}, "router_temperature")]:
        with pytest.raises(ConfigError, match=field):
            peftkit.ArrowConfig(**options)  # type: ignore[arg-type]


def test_only_linear_layers_are_routed(tmp_path: Path) -> None:
    conv = nn.Sequential(nn.Conv2d(3, 4, 1))
    peftkit.get_peft_model(conv, peftkit.LoraConfig(r=2, target_modules=["0"])).save_pretrained(tmp_path / "conv")
    with pytest.raises(ArgumentTypeError, match="Linear and Conv1D"):
        peftkit.create_arrow_model(nn.Sequential(nn.Conv2d(3, 4, 1)), [str(tmp_path / "conv")], peftkit.ArrowConfig(1))
    config = peftkit.LoraConfig(r=2, target_modules=["0"], arrow_config=peftkit.ArrowConfig(top_k=1))
    with pytest.raises(UnsupportedError, match="Linear and Conv1D"):
        peftkit.get_peft_model(nn.Sequential(nn.Embedding(10, 4)), config)


def test_adapter_sources_resolve_as_the_reference_does(tmp_path: Path) -> None:
    local = tmp_path / "a" / "b"
    local.mkdir(parents=True)
    (local / "adapter_config.json").write_text("{}")
    assert _resolve_adapter_source(str(local)) == (str(local), None)
    assert _resolve_adapter_source("user/repo") == ("user/repo", None)
    assert _resolve_adapter_source("user/repo/sub/folder") == ("user/repo", "sub/folder")
    with pytest.raises(ConfigError, match=r"adapter_config\.json"):
        _resolve_adapter_source(str(tmp_path))
