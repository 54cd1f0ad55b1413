"""LoRA on parameters (``target_parameters``): one LoRA per expert of a fused 3-D parameter against the formula,
nesting of several parameters of one module, several adapters, training, merge / unmerge, and the errors."""

from __future__ import annotations

import threading

import pytest
import torch
from tests._tiny import build_model
from tests.methods._training import adam_losses
from torch import nn

import peftkit as peft
from peftkit.errors import ConfigError, TargetingError, UnsupportedError, UsageError
from peftkit.hotswap import hotswap_adapter
from peftkit.integrations import enable_adapter_methods
from peftkit.methods.lora.describe import describe_lora_module
from peftkit.methods.lora.param import ParamWrapper


class Experts(nn.Module):
    """``E`` experts applied to every token and summed: ``y = sum_e x @ W_e^T`` with ``W (E, out, in)`` (or
    ``(E, in, out)`` when ``is_transposed``), plus a 2-D ``proj (out, out)`` and a 1-D ``scale``."""

    def __init__(self, transposed: bool = False) -> None:
        super().__init__()
        self.is_transposed = transposed
        self.w = nn.Parameter(torch.randn((3, 4, 5) if transposed else (3, 5, 4)))
        self.proj = nn.Parameter(torch.randn(5, 5))
        self.scale = nn.Parameter(torch.ones(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.w.transpose(1, 2) if self.is_transposed else self.w  # (E, out, in)
        return torch.einsum("ni,eoi->no", x, w) @ self.proj.T * self.scale


class Net(nn.Module):
    def __init__(self, transposed: bool = False) -> None:
        super().__init__()
        self.experts = Experts(transposed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.experts(x)


def wrapped(transposed: bool = False, targets: tuple[str, ...] = ("experts.w",), **extra: object) -> peft.PeftModel:
    torch.manual_seed(0)
    config = peft.LoraConfig(r=2, lora_alpha=3, target_parameters=list(targets), init_lora_weights=False, **extra)
    return peft.get_peft_model(Net(transposed), config)


def per_expert_delta(layer: ParamWrapper, adapter: str = "default") -> torch.Tensor:
    """Oracle: expert e's update s * B[:, e-th columns] @ A[e-th rows], (E, out, in)."""
    A, B = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    E, r, s = layer.num_experts, layer.r[adapter], layer.scaling[adapter]
    return torch.stack([s * B[:, [j * E + e for j in range(r)]] @ A[e * r : (e + 1) * r] for e in range(E)])


@pytest.mark.parametrize("transposed", [False, True])
def test_forward_is_the_module_with_one_lora_per_expert(transposed: bool) -> None:
    model = wrapped(transposed)
    layer = model.base_model.model.experts
    assert isinstance(layer, ParamWrapper) and layer.num_experts == 3
    assert layer.lora_A["default"].weight.shape == (6, 4) and layer.lora_B["default"].weight.shape == (5, 6)
    delta = per_expert_delta(layer)
    W = layer.get_param().detach()
    expected_W = W + (delta.transpose(1, 2) if transposed else delta)
    torch.testing.assert_close(layer.get_delta_weight("default"), expected_W - W)
    x = torch.randn(7, 4)
    plain = Experts(transposed)
    plain.load_state_dict({"w": expected_W, "proj": layer.get_base_layer().proj, "scale": layer.get_base_layer().scale})
    torch.testing.assert_close(model(x), plain(x))


def test_two_parameters_nest_and_a_2d_parameter_is_one_expert() -> None:
    model = wrapped(targets=("experts.w", "experts.proj"))
    outer = model.base_model.model.experts
    assert (outer.parameter_name, outer.base_layer.parameter_name) == ("proj", "w")  # registration order: w inside
    assert outer.num_experts == 1 and outer.get_delta_weight("default").shape == (5, 5)
    keys = {k for k in model.state_dict() if ".lora_" in k}
    assert keys == {
        f"base_model.model.experts.{inner}lora_{ab}.default.weight" for inner in ("", "base_layer.") for ab in "AB"
    }
    x = torch.randn(2, 4)
    out = model(x)
    model.merge_adapter()
    torch.testing.assert_close(model(x), out)
    model.unmerge_adapter()
    torch.testing.assert_close(model(x), out)
    with model.disable_adapter():
        base = model(x)
    merged = model.merge_and_unload()
    assert type(merged.experts) is Experts
    torch.testing.assert_close(merged(x), out)
    assert not torch.allclose(base, out)


def test_a_second_adapter_reuses_the_wrappers_and_trains_alone() -> None:
    model = wrapped(targets=("experts.w", "experts.proj"))
    model.add_adapter("other", peft.LoraConfig(r=1, target_parameters=["experts.proj", "experts.w"]))
    outer = model.base_model.model.experts
    assert sorted(outer.lora_A) == sorted(outer.base_layer.lora_A) == ["default", "other"]
    model.set_adapter("other")
    base = {k: v.clone() for k, v in model.named_parameters() if ".lora_" not in k}
    frozen = {k: v.clone() for k, v in model.named_parameters() if ".default." in k}
    x, target = torch.randn(16, 4), torch.randn(16, 5)
    losses = adam_losses(model, lambda: (model(x) - target).pow(2).mean(), steps=8, lr=0.05)
    assert losses[-1] < losses[0]
    params = dict(model.named_parameters())
    assert all(torch.equal(v, params[k]) for k, v in {**base, **frozen}.items())
    model.delete_adapter("default")
    assert list(outer.lora_A) == list(outer.base_layer.lora_A) == ["other"]


@pytest.mark.parametrize(
    ("targets", "extra", "error", "match"),
    [
        (("experts.missing",), {}, TargetingError, "matched no parameter"),
        (("experts.scale",), {}, ConfigError, "2-D .* and 3-D"),
        (("experts.w",), {"lora_dropout": 0.1}, ConfigError, "lora_dropout"),
        (("experts.w",), {"use_dora": True}, ConfigError, "use_dora"),
    ],
)
def test_bad_targets_raise_and_leave_the_model_unchanged(targets, extra, error, match) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = Net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=match):
        peft.get_peft_model(model, peft.LoraConfig(r=2, target_parameters=list(targets), **extra))
    assert type(model.experts) is Experts
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_a_module_targeted_twice_is_refused() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(TargetingError, match="already an adapter layer"):
        peft.get_peft_model(model, peft.LoraConfig(target_modules=["0"], target_parameters=["0.weight"]))
    assert type(model[0]) is nn.Linear


def test_other_parameter_sets_mixed_batches_and_weighted_combination_are_refused() -> None:
    model = wrapped()
    with pytest.raises(ConfigError, match="must target the same ones"):
        model.add_adapter("other", peft.LoraConfig(target_parameters=["experts.proj"]))
    model.add_adapter("other", peft.LoraConfig(target_parameters=["experts.w"]))
    with pytest.raises(UsageError, match="mixed batch"):
        model(torch.randn(2, 4), adapter_names=["default", "other"])
    with pytest.raises(UnsupportedError, match="target parameters"):
        model.add_weighted_adapter(["default", "other"], [1.0, 1.0], "mix", "cat")


def test_a_tiny_mixtral_trains_its_experts_with_the_base_bit_identical() -> None:
    model = peft.get_peft_model(
        build_model("mixtral"),
        peft.LoraConfig(r=2, target_modules=[], target_parameters=["experts.gate_up_proj", "experts.down_proj"]),
    ).train()
    base = {k: v.clone() for k, v in model.named_parameters()}
    ids = torch.randint(0, 64, (2, 6))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.02)
    losses = []
    for _ in range(6):
        loss = model(input_ids=ids, labels=ids).loss
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < losses[0]
    changed = {k for k, v in model.named_parameters() if not torch.equal(v, base[k])}
    assert changed and all(".lora_" in k for k in changed)


@pytest.mark.parametrize("targets", [["experts.gate_up_proj", "experts.down_proj"], ["gate_up_proj", "down_proj"]])
def test_inspect_reports_the_per_expert_rank_and_update_norm(targets: list[str]) -> None:
    config = peft.LoraConfig(r=2, lora_alpha=3, target_modules=["q_proj"], target_parameters=targets)
    model = peft.get_peft_model(build_model("mixtral"), config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_" in name:
                param.normal_()
    state = model.state_dict()
    for name, layer in model.base_model.model.named_modules():
        if not hasattr(layer, "lora_A") or "default" not in layer.lora_A:
            continue
        tensors = {f"lora_{x}.weight": state[f"base_model.model.{name}.lora_{x}.default.weight"] for x in "AB"}
        rank, norm = describe_lora_module(name, tensors, config.to_dict())
        assert rank == 2, name
        torch.testing.assert_close(norm, float(layer.get_delta_weight("default").detach().norm()), rtol=1e-4, atol=1e-5)


def test_transformers_adapter_methods_save_and_load_expert_adapters(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = peft.LoraConfig(
        r=2, target_modules=[], target_parameters=["experts.gate_up_proj"], init_lora_weights=False
    )
    model = enable_adapter_methods(build_model("mixtral"))
    model.add_adapter(config)
    ids = torch.randint(0, 64, (2, 5))
    with torch.no_grad():
        out = model(input_ids=ids).logits
        assert not torch.allclose(out, build_model("mixtral")(input_ids=ids).logits, atol=1e-4)
        model.save_pretrained(tmp_path)
        fresh = enable_adapter_methods(build_model("mixtral"))
        fresh.load_adapter(str(tmp_path), adapter_name="experts")
        torch.testing.assert_close(fresh(input_ids=ids).logits, out)


def test_concurrent_forwards_from_threads_equal_the_single_thread_output() -> None:
    model = peft.get_peft_model(
        build_model("mixtral"),
        peft.LoraConfig(r=2, target_modules=[], target_parameters=["experts.gate_up_proj"], init_lora_weights=False),
    ).eval()
    batches = [torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(i)) for i in range(4)]
    with torch.no_grad():
        expected = [model(input_ids=ids).logits for ids in batches]
    results: dict[int, list[torch.Tensor]] = {}

    def work(i: int) -> None:
        with torch.no_grad():
            results[i] = [model(input_ids=batches[i]).logits for _ in range(10)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, outs in results.items():
        for out in outs:
            torch.testing.assert_close(out, expected[i])
    assert sorted(results) == [0, 1, 2, 3]


def test_hotswap_of_an_expert_adapter_same_and_larger_rank(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Other ranks and compiled swaps: tests/integration/test_hotswap_experts.py."""

    def config(r: int) -> peft.LoraConfig:
        return peft.LoraConfig(r=r, target_modules=[], target_parameters=["experts.down_proj"], init_lora_weights=False)

    torch.manual_seed(1)
    source = peft.get_peft_model(build_model("mixtral"), config(2)).eval()
    source.save_pretrained(tmp_path / "same")
    bigger = peft.get_peft_model(build_model("mixtral"), config(4)).eval()
    bigger.save_pretrained(tmp_path / "bigger")
    torch.manual_seed(2)
    model = peft.get_peft_model(build_model("mixtral"), config(2)).eval()
    ids = torch.randint(0, 64, (2, 5))
    for name, expected in (("same", source), ("bigger", bigger)):
        hotswap_adapter(model, str(tmp_path / name), adapter_name="default")
        with torch.no_grad():
            torch.testing.assert_close(model(input_ids=ids).logits, expected(input_ids=ids).logits)


def test_parametrized_parameter_is_refused_before_anything_changes() -> None:
    """A weight computed by ``torch.nn.utils.parametrize`` (PEFT stacks its LoRA on it) is refused with the reason;
    the model keeps computing as before."""
    model = nn.Sequential(nn.Linear(4, 3))
    nn.utils.parametrize.register_parametrization(model[0], "weight", _PlusOne())
    x = torch.randn(2, 4)
    before = model(x)
    with pytest.raises(UnsupportedError, match=r"0\.weight is computed by a torch parametrization"):
        peft.get_peft_model(model, peft.LoraConfig(r=2, target_parameters=["0.weight"]))
    assert not any("lora" in name for name, _ in model.named_modules())
    torch.testing.assert_close(model(x), before)


class _PlusOne(nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + 1
