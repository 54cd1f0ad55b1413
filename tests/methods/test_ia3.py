"""IA3 behaviour against formula oracles: ``y = base(x) * l`` (attention-type) and ``y = base(x * l)``
(feed-forward) on Linear, GPT-2 Conv1D and Conv1d/2d/3d (grouped too); merging, several adapters, mixed
batches, training, save/load and config errors."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.pytorch_utils import Conv1D

import peftkit as peft
from peftkit.methods.ia3.layer import IA3Layer

# kind -> (base layer factory, input shape, channel dim of activations)
LAYERS = {
    "linear": (lambda: nn.Linear(6, 5), (3, 4, 6), -1),
    "gpt2_conv1d": (lambda: Conv1D(5, 6), (3, 4, 6), -1),  # Conv1D(nf=out, nx=in)
    "conv1d": (lambda: nn.Conv1d(4, 6, 3, padding=1), (2, 4, 7), 1),
    "conv2d": (lambda: nn.Conv2d(4, 6, 3, padding=1), (2, 4, 5, 5), 1),
    "conv2d_grouped": (lambda: nn.Conv2d(4, 6, 3, groups=2), (2, 4, 5, 5), 1),
    "conv3d": (lambda: nn.Conv3d(2, 4, 2), (2, 2, 3, 3, 3), 1),
}
EVERY_LAYER = pytest.mark.parametrize(
    ("kind", "feedforward"),
    [(kind, ff) for kind in sorted(LAYERS) for ff in (False, True)],
    ids=[f"{kind}-{'feedforward' if ff else 'attention'}" for kind in sorted(LAYERS) for ff in (False, True)],
)


def along(vector: torch.Tensor, dim: int, ndim: int) -> torch.Tensor:
    """``vector`` (flattened) shaped to broadcast along dimension ``dim`` of an ``ndim``-d activation."""
    shape = [1] * ndim
    shape[dim] = -1
    return vector.flatten().view(shape)


def ia3_oracle(base: nn.Module, x: torch.Tensor, vector: torch.Tensor, dim: int, feedforward: bool) -> torch.Tensor:
    """``base(x * l)`` for feed-forward targets, ``base(x) * l`` otherwise (``l`` along the channel dim)."""
    if feedforward:
        return base(x * along(vector, dim, x.dim()))
    y = base(x)
    return y * along(vector, dim, y.dim())


def build(kind: str, feedforward: bool, names: tuple[str, ...] = ("default",)) -> tuple[nn.Module, nn.Module]:
    """``(peft model, copy of the original layer)`` with random (non-identity) vectors."""
    factory, _, _ = LAYERS[kind]
    torch.manual_seed(0)
    layer = factory()
    original = copy.deepcopy(layer)
    config = peft.IA3Config(
        target_modules=["0"], feedforward_modules=["0"] if feedforward else [], init_ia3_weights=False
    )
    model = peft.get_peft_model(nn.Sequential(layer), config, adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, config)
    return model, original


def vector(model: nn.Module, name: str = "default") -> torch.Tensor:
    return model.base_model.model[0].ia3_l[name]


@EVERY_LAYER
def test_forward_matches_formula_and_gradients_flow(kind: str, feedforward: bool) -> None:
    model, original = build(kind, feedforward)
    _, shape, dim = LAYERS[kind]
    x = torch.randn(shape)
    l_vec = vector(model)
    y = model(x)
    if dim == -1:
        assert tuple(l_vec.shape) == ((1, x.shape[-1]) if feedforward else (y.shape[-1], 1))
    else:
        assert tuple(l_vec.shape) == (1, (x if feedforward else y).shape[1]) + (1,) * (x.dim() - 2)
    torch.testing.assert_close(y, ia3_oracle(original, x, l_vec.detach(), dim, feedforward))
    y.square().sum().backward()
    reference = l_vec.detach().clone().requires_grad_(True)
    ia3_oracle(original, x, reference, dim, feedforward).square().sum().backward()
    torch.testing.assert_close(l_vec.grad, reference.grad)
    assert model.base_model.model[0].base_layer.weight.grad is None  # the base stays frozen


@EVERY_LAYER
def test_merge_equals_unmerged_and_unmerge_restores(kind: str, feedforward: bool) -> None:
    model, original = build(kind, feedforward)
    _, shape, _ = LAYERS[kind]
    x = torch.randn(shape)
    expected = model(x).detach()
    model.base_model.merge_adapter()
    layer = model.base_model.model[0]
    torch.testing.assert_close(layer.base_layer(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    model.base_model.unmerge_adapter()
    torch.testing.assert_close(layer.base_layer.weight, original.weight, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.base_layer.bias, original.bias, atol=1e-5, rtol=1e-5)
    merged = model.merge_and_unload()
    assert not any(isinstance(m, IA3Layer) for m in merged.modules())
    torch.testing.assert_close(merged(x), expected, atol=1e-5, rtol=1e-5)


def test_safe_merge_refuses_non_finite_vectors_and_keeps_weights() -> None:
    model, original = build("linear", feedforward=False)
    with torch.no_grad():
        vector(model)[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN/Inf"):
        model.base_model.merge_adapter(safe_merge=True)
    torch.testing.assert_close(model.base_model.model[0].base_layer.weight, original.weight)


def test_several_adapters_compose_and_mixed_batches_route_per_sample() -> None:
    model, original = build("linear", feedforward=False, names=("a", "b"))
    x = torch.randn(3, 4, 6)
    la, lb = vector(model, "a").detach(), vector(model, "b").detach()
    model.base_model.set_adapter(["a", "b"])
    torch.testing.assert_close(model(x), original(x) * la.flatten() * lb.flatten())
    model.eval()
    mixed = model(x, adapter_names=["b", "__base__", "a"])
    torch.testing.assert_close(mixed[0], original(x[0]) * lb.flatten())
    torch.testing.assert_close(mixed[1], original(x[1]))
    torch.testing.assert_close(mixed[2], original(x[2]) * la.flatten())


def test_adapters_with_different_placement_share_a_layer() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(6, 5)
    original = copy.deepcopy(layer)
    attention = peft.IA3Config(target_modules=["0"], feedforward_modules=[], init_ia3_weights=False)
    model = peft.get_peft_model(nn.Sequential(layer), attention, adapter_name="att")
    model.add_adapter("ff", peft.IA3Config(target_modules=["0"], feedforward_modules=["0"]))
    with torch.no_grad():
        vector(model, "ff").uniform_(0.5, 1.5)
    model.base_model.set_adapter(["att", "ff"])
    x = torch.randn(2, 6)
    expected = original(x * vector(model, "ff").detach().flatten()) * vector(model, "att").detach().flatten()
    torch.testing.assert_close(model(x), expected)


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    shape = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
    # Weights larger than the default init, so that rescaling activations has something to work with.
    return LlamaForCausalLM(LlamaConfig(vocab_size=40, num_key_value_heads=1, initializer_range=0.2, **shape))


def test_architecture_defaults_fill_the_stored_config_not_the_users() -> None:
    config = peft.IA3Config()
    model = peft.get_peft_model(tiny_llama(), config)
    stored = model.peft_config["default"]
    assert config.target_modules is None and config.feedforward_modules is None
    assert stored.target_modules == {"k_proj", "v_proj", "down_proj"}
    assert stored.feedforward_modules == {"down_proj"}
    mlp = model.base_model.model.model.layers[0].mlp
    attn = model.base_model.model.model.layers[0].self_attn
    assert tuple(mlp.down_proj.ia3_l["default"].shape) == (1, 32)
    assert tuple(attn.k_proj.ia3_l["default"].shape) == (8, 1)
    assert not isinstance(attn.q_proj, IA3Layer)
    torch.testing.assert_close(mlp.down_proj.ia3_l["default"], torch.ones(1, 32))  # init_ia3_weights=True


def test_training_lowers_the_loss_and_round_trips(tmp_path: Path) -> None:
    model = peft.get_peft_model(tiny_llama(), peft.IA3Config(task_type="CAUSAL_LM"))
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.shape[0] == 1 or p.shape[1] == 1 for p in trainable)
    ids = torch.randint(0, 40, (4, 12), generator=torch.Generator().manual_seed(3))
    optimizer = torch.optim.Adam(trainable, lr=0.1)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss

    losses = [optimizer.step(closure).item() for _ in range(30)]
    assert losses[-1] < 0.85 * losses[0]
    model.save_pretrained(tmp_path)
    loaded = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path)
    assert isinstance(loaded.base_model, peft.IA3Model)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    assert loaded.peft_config["default"].feedforward_modules == {"down_proj"}


def test_config_errors_say_what_to_change() -> None:
    with pytest.raises(peft.ConfigError, match="subset of target_modules"):
        peft.IA3Config(target_modules=["q_proj"], feedforward_modules=["down_proj"])
    with pytest.raises(peft.ConfigError, match="init_ia3_weights"):
        peft.IA3Config(init_ia3_weights="ones")  # type: ignore[arg-type]
    with pytest.raises(peft.ConfigError, match="no default feedforward_modules"):
        peft.get_peft_model(nn.Sequential(nn.Linear(3, 3)), peft.IA3Config(target_modules=["0"]))
    with pytest.raises(peft.TargetingError, match="No default target_modules"):
        peft.get_peft_model(nn.Sequential(nn.Linear(3, 3)), peft.IA3Config(feedforward_modules=[]))
    with pytest.raises(peft.TargetingError, match="cannot adapt"):
        config = peft.IA3Config(target_modules=["0"], feedforward_modules=[])
        peft.get_peft_model(nn.Sequential(nn.Embedding(3, 3)), config)
