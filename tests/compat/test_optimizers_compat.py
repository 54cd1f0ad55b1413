"""``peftkit.optimizers`` against the reference ``peft.optimizers``: LoRA+ builds the same parameter groups
(names, learning rates, weight decays) and the same updates; LoRA-FA and the Riemannian preconditioner give the
same parameters after several steps of the same model on the same data (LoRA on Linear and Embedding layers,
``rank_pattern`` / ``alpha_pattern``, rsLoRA, DoRA magnitudes, biases)."""

from __future__ import annotations

from typing import Any

import peft
import peft.optimizers as peft_optimizers
import peft.optimizers.lorafa as peft_lorafa
import pytest
import torch
from torch import nn

import peftkit
import peftkit.optimizers as kit_optimizers
from peftkit.errors import ArgumentTypeError, ConfigError, UsageError


class TinyNet(nn.Module):
    """Embedding -> Linear -> LayerNorm -> Linear, with biases: every LoRA+ group gets members."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(50, 12)
        self.lin0 = nn.Linear(12, 16)
        self.norm = nn.LayerNorm(16)
        self.lin1 = nn.Linear(16, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin1(self.norm(torch.relu(self.lin0(self.embedding(x)))))


CONFIG: dict[str, Any] = {"r": 4, "lora_alpha": 8, "target_modules": ["embedding", "lin0", "lin1"]}


def _pair(seed: int, **fields: Any) -> tuple[nn.Module, nn.Module]:
    """The same LoRA model in the reference and in peftkit (peftkit's tensors copied from the reference's)."""
    options = {**CONFIG, "init_lora_weights": False, **fields}
    torch.manual_seed(seed)
    ref = peft.get_peft_model(TinyNet(), peft.LoraConfig(**options))
    kit = peftkit.get_peft_model(TinyNet(), peftkit.LoraConfig(**options))
    kit_params = dict(kit.named_parameters())
    assert set(kit_params) == {name for name, _ in ref.named_parameters()}
    with torch.no_grad():
        for name, param in ref.named_parameters():
            kit_params[name].copy_(param)
            kit_params[name].requires_grad_(param.requires_grad)
    return ref, kit


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 4) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    for _ in range(steps):
        x = torch.randint(50, (3, 5), generator=generator)
        target = torch.randint(7, (3, 5), generator=generator)
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), target.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def _assert_same(ref: dict[str, torch.Tensor], kit: dict[str, torch.Tensor], before: dict[str, torch.Tensor]) -> None:
    assert set(ref) == set(kit)
    moved = [name for name in ref if not torch.equal(ref[name], before[name])]
    assert moved, "no parameter changed: the comparison would be empty"
    for name in ref:
        torch.testing.assert_close(kit[name], ref[name], rtol=1e-5, atol=1e-6, msg=name)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def _named_groups(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[tuple[list[str], float, float]]:
    names = {id(param): name for name, param in model.named_parameters()}
    return [(sorted(names[id(p)] for p in g["params"]), g["lr"], g["weight_decay"]) for g in optimizer.param_groups]


LINEAR_ONLY = {"target_modules": ["lin0", "lin1"]}  # DoRA and lora_bias are Linear-only in the reference


@pytest.mark.parametrize(
    "fields", [{}, {"bias": "all"}, {"use_dora": True, **LINEAR_ONLY}, {"lora_bias": True, **LINEAR_ONLY}]
)
def test_loraplus_groups_and_updates_match_reference(fields: dict[str, Any]) -> None:
    ref, kit = _pair(3, **fields)
    before = _snapshot(ref)
    options = {"lr": 1e-2, "loraplus_lr_ratio": 8.0, "loraplus_weight_decay": 0.1, "loraplus_lr_embedding": 3e-3}
    ref_opt = peft_optimizers.create_loraplus_optimizer(ref, torch.optim.AdamW, **options)
    kit_opt = kit_optimizers.create_loraplus_optimizer(kit, torch.optim.AdamW, **options)
    assert _named_groups(kit, kit_opt) == _named_groups(ref, ref_opt)
    assert sum(len(group[0]) for group in _named_groups(kit, kit_opt)) == sum(p.requires_grad for p in kit.parameters())
    _assert_same(_train(ref, ref_opt), _train(kit, kit_opt), before)


def test_loraplus_on_a_model_without_adapters_matches_reference() -> None:
    torch.manual_seed(0)
    model = TinyNet()
    ref_opt = peft_optimizers.create_loraplus_optimizer(model, torch.optim.SGD, lr=0.1, loraplus_lr_ratio=4.0)
    kit_opt = kit_optimizers.create_loraplus_optimizer(model, torch.optim.SGD, lr=0.1, loraplus_lr_ratio=4.0)
    assert _named_groups(model, kit_opt) == _named_groups(model, ref_opt)


@pytest.fixture
def reference_lorafa_in_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference projects B's gradient under bfloat16 autocast where bfloat16 is available; peftkit in
    float32 (a documented difference), so the comparison runs the reference's float32 path."""
    monkeypatch.setattr(peft_lorafa, "is_bf16_available", lambda: False)


@pytest.mark.usefixtures("reference_lorafa_in_float32")
@pytest.mark.parametrize(
    "fields",
    [{}, {"use_rslora": True}, {"rank_pattern": {"lin0": 2}, "alpha_pattern": {"lin1": 3}}, {"bias": "all"}],
)
def test_lorafa_updates_match_reference(fields: dict[str, Any]) -> None:
    fields = {**fields, "target_modules": ["lin0", "lin1"]}
    ref, kit = _pair(5, **fields)
    before = _snapshot(ref)
    ref_opt = peft_optimizers.create_lorafa_optimizer(ref, r=4, lora_alpha=8, lr=1e-2, weight_decay=0.05)
    kit_opt = kit_optimizers.create_lorafa_optimizer(kit, r=4, lora_alpha=8, lr=1e-2, weight_decay=0.05)
    assert [n for n, p in kit.named_parameters() if p.requires_grad] == [
        n for n, p in ref.named_parameters() if p.requires_grad
    ]
    after = _train(kit, kit_opt)
    _assert_same(_train(ref, ref_opt), after, before)
    assert all(torch.equal(after[n], before[n]) for n in before if ".lora_A." in n)


@pytest.mark.usefixtures("reference_lorafa_in_float32")
def test_lorafa_on_embedding_matches_reference() -> None:
    ref, kit = _pair(6, target_modules=["embedding"])
    before = _snapshot(ref)
    ref_opt = peft_optimizers.create_lorafa_optimizer(ref, r=4, lora_alpha=8, lr=1e-2)
    kit_opt = kit_optimizers.create_lorafa_optimizer(kit, r=4, lora_alpha=8, lr=1e-2)
    _assert_same(_train(ref, ref_opt), _train(kit, kit_opt), before)


def test_lorafa_projection_is_the_formula() -> None:
    """``g_B <- g_B (A A^T)^-1 / s^2`` on a well-conditioned ``A`` (the 1e-8 damping is below float tolerance)."""
    torch.manual_seed(1)
    A, grad_B, s = torch.randn(3, 10, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64), 2.5
    expected = grad_B @ torch.linalg.inv(A @ A.T) / s**2
    torch.testing.assert_close(kit_optimizers.lorafa.projected_b_grad(A, grad_B, s), expected)


def test_lorafa_refuses_two_trainable_adapters_on_one_layer() -> None:
    _, kit = _pair(7, target_modules=["lin0"])
    kit.add_adapter("other", peftkit.LoraConfig(r=2, target_modules=["lin0"], init_lora_weights=False))
    for name, param in kit.named_parameters():
        param.requires_grad_("lora_" in name)
    optimizer = kit_optimizers.create_lorafa_optimizer(kit, r=4, lora_alpha=8, lr=1e-2)
    kit(torch.randint(50, (2, 3))).sum().backward()
    for name, param in kit.named_parameters():
        if ".lora_B.other" in name:
            param.grad = torch.ones_like(param)
    with pytest.raises(ConfigError, match="one adapter per LoRA layer"):
        optimizer.step()


def test_lorafa_rslora_argument_is_checked_and_deprecated() -> None:
    _, kit = _pair(8, use_rslora=True)
    with pytest.raises(ConfigError, match="use_rslora=False was passed"):
        kit_optimizers.create_lorafa_optimizer(kit, r=4, lora_alpha=8, lr=1e-2, use_rslora=False)
    with pytest.warns(FutureWarning, match="use_rslora"):
        kit_optimizers.create_lorafa_optimizer(kit, r=4, lora_alpha=8, lr=1e-2, use_rslora=True)


OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], dict[str, Any]]] = {
    "adamw": (torch.optim.AdamW, {"weight_decay": 0.01}),
    "sgd": (torch.optim.SGD, {"momentum": 0.9}),
}


@pytest.mark.parametrize("fields", [{}, {"use_dora": True}, {"lora_bias": True}])
@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_riemannian_updates_match_reference(kind: str, fields: dict[str, Any]) -> None:
    optimizer_cls, options = OPTIMIZERS[kind]
    ref, kit = _pair(9, **{**fields, "target_modules": ["lin0", "lin1"]})
    before = _snapshot(ref)
    ref_opt = peft_optimizers.create_riemannian_optimizer(ref, optimizer_cls, lr=1e-2, reg=1e-3, **options)
    kit_opt = kit_optimizers.create_riemannian_optimizer(kit, optimizer_cls, lr=1e-2, reg=1e-3, **options)
    assert isinstance(kit_opt, optimizer_cls)
    _assert_same(_train(ref, ref_opt), _train(kit, kit_opt), before)


def test_riemannian_preconditioner_is_the_formula() -> None:
    torch.manual_seed(2)
    A, B = nn.Parameter(torch.randn(3, 8, dtype=torch.float64)), nn.Parameter(torch.randn(5, 3, dtype=torch.float64))
    gA, gB = torch.randn_like(A), torch.randn_like(B)
    A.grad, B.grad = gA.clone(), gB.clone()
    kit_optimizers.riemannian.RiemannianPreconditioner([(A, B)], reg=0.1).step()
    eye = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(A.grad, torch.linalg.inv(B.T @ B + 0.1 * eye) @ gA)
    torch.testing.assert_close(B.grad, gB @ torch.linalg.inv(A @ A.T + 0.1 * eye))


def test_riemannian_refusals() -> None:
    _, kit = _pair(10)
    with pytest.raises(ArgumentTypeError, match=r"subclass of torch\.optim\.Optimizer"):
        kit_optimizers.create_riemannian_optimizer(kit, dict, lr=1e-3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="requires a closure"):
        kit_optimizers.create_riemannian_optimizer(kit, torch.optim.LBFGS, lr=1e-3)
    with pytest.raises(ConfigError, match="lora_A/lora_B parameter pairs"):
        kit_optimizers.create_riemannian_optimizer(TinyNet(), torch.optim.AdamW, lr=1e-3)
    optimizer = kit_optimizers.create_riemannian_optimizer(kit, torch.optim.SGD, lr=1e-3)
    with pytest.raises(UsageError, match="does not support closures"):
        optimizer.step(lambda: 0.0)
