"""LoRA on ``nn.MultiheadAttention`` against a formula oracle.

The adapted attention is the base attention computed with ``W_in + s * B @ A`` (``A (r, E)``, ``B (3E, r)``) and
``W_out + k * s * B' @ A'`` (the LoRA layer on ``out_proj``), ``k = 2`` as PEFT 0.21.2 computes it (see
``peftkit.methods.lora.multihead.OUT_PROJ_UPDATE_FACTOR``); merging writes exactly those weights.
"""

from __future__ import annotations

import copy
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import peftkit as peft
from peftkit.errors import ConfigError, TargetingError

E, HEADS, R, ALPHA = 8, 2, 4, 6


class Attend(nn.Module):
    def __init__(self, batch_first: bool = False, **extra) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(E, HEADS, batch_first=batch_first, **extra)
        self.head = nn.Linear(E, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.mha(x, x, x, key_padding_mask=mask)[0])


def oracle(base: nn.MultiheadAttention, x, mask, in_weight, out_weight) -> torch.Tensor:
    """Torch's attention with the given projection weights (and the base's biases)."""
    q = x.transpose(0, 1) if base.batch_first else x
    out, _ = F.multi_head_attention_forward(
        q, q, q, E, HEADS, in_weight, base.in_proj_bias, base.bias_k, base.bias_v, base.add_zero_attn, 0.0,
        out_weight, base.out_proj.bias, training=False, key_padding_mask=mask, need_weights=False,
    )  # fmt: skip
    return out.transpose(0, 1) if base.batch_first else out


def build(batch_first: bool = False, names: tuple[str, ...] = ("default",), **extra):
    torch.manual_seed(0)
    model = Attend(batch_first, **extra)
    base = copy.deepcopy(model)
    config = peft.LoraConfig(target_modules=["mha"], r=R, lora_alpha=ALPHA, init_lora_weights=False)
    peft_model = peft.get_peft_model(model, config, adapter_name=names[0])
    for name in names[1:]:
        peft_model.add_adapter(name, config)
    return peft_model.eval(), base.eval()


def factors(peft_model, adapter: str = "default"):
    layer = peft_model.base_model.model.mha
    out = layer.base_layer.out_proj
    return (
        layer.lora_A[adapter].weight, layer.lora_B[adapter].weight,
        out.lora_A[adapter].weight, out.lora_B[adapter].weight,
    )  # fmt: skip


def adapted_weights(base: nn.MultiheadAttention, A, B, A_out, B_out):
    s = ALPHA / R
    return base.in_proj_weight + s * B @ A, base.out_proj.weight + 2 * s * B_out @ A_out


@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
def test_keys_shapes_forward_and_gradients_match_formula(batch_first: bool) -> None:
    model, base = build(batch_first)
    keys = {k: tuple(v.shape) for k, v in model.state_dict().items() if "lora_" in k}
    prefix = "base_model.model.mha."
    assert keys == {
        prefix + "lora_A.default.weight": (R, E),
        prefix + "lora_B.default.weight": (3 * E, R),
        prefix + "base_layer.out_proj.lora_A.default.weight": (R, E),
        prefix + "base_layer.out_proj.lora_B.default.weight": (E, R),
    }
    x = torch.randn((3, 5, E) if batch_first else (5, 3, E))
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[0, -2:] = True
    live = factors(model)
    copies = [t.detach().clone().requires_grad_(True) for t in live]
    expected = base.head(oracle(base.mha, x, mask, *adapted_weights(base.mha, *copies)))
    out = model(x, mask)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, base(x, mask), atol=1e-3)
    grad_out = torch.randn_like(out)
    (out * grad_out).sum().backward()
    (expected * grad_out).sum().backward()
    for tensor, reference in zip(live, copies, strict=True):
        torch.testing.assert_close(tensor.grad, reference.grad, rtol=1e-4, atol=1e-5)
    mha = model.base_model.model.mha
    assert not mha.get_base_layer().in_proj_weight.requires_grad
    assert isinstance(mha.get_base_layer()._parameters["in_proj_weight"], nn.Parameter)  # restored after the call


def test_merge_writes_the_formula_weights_and_unmerge_restores() -> None:
    model, base = build()
    mha = model.base_model.model.mha.get_base_layer()
    x = torch.randn(5, 3, E)
    before = model(x)
    in_weight, out_weight = adapted_weights(base.mha, *(t.detach() for t in factors(model)))
    model.merge_adapter()
    torch.testing.assert_close(mha.in_proj_weight, in_weight)
    torch.testing.assert_close(mha.out_proj.weight, out_weight)
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    model.unmerge_adapter()
    torch.testing.assert_close(mha.in_proj_weight, base.mha.in_proj_weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(mha.out_proj.weight, base.mha.out_proj.weight, rtol=0, atol=1e-6)
    merged = model.merge_and_unload()
    assert type(merged.mha) is nn.MultiheadAttention
    assert type(merged.mha.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    assert merged.state_dict().keys() == base.state_dict().keys()
    torch.testing.assert_close(merged(x), before, rtol=1e-5, atol=1e-5)


def test_disable_switch_delete_and_unload_restore_the_plain_attention() -> None:
    model, base = build(names=("one", "two"))
    x = torch.randn(5, 3, E)
    with model.disable_adapter():
        torch.testing.assert_close(model(x), base(x))
    first = model(x)
    model.set_adapter("two")
    second = model(x)
    assert not torch.allclose(first, second, atol=1e-4)
    expected = base.head(
        oracle(base.mha, x, None, *adapted_weights(base.mha, *(t.detach() for t in factors(model, "two"))))
    )
    torch.testing.assert_close(second, expected, rtol=1e-5, atol=1e-5)
    model.delete_adapter("one")
    model.delete_adapter("two")
    assert type(model.base_model.model.mha) is nn.MultiheadAttention
    assert model.base_model.model.mha.out_proj.__class__ is nn.modules.linear.NonDynamicallyQuantizableLinear
    torch.testing.assert_close(model(x), base(x))


def test_mixed_batch_is_refused_with_a_type_error() -> None:
    model, _ = build(names=("one", "two"))
    with pytest.raises(TypeError, match="mixed batch"):
        model(torch.randn(5, 3, E), adapter_names=["one", "two", "one"])


@pytest.mark.parametrize(
    ("extra", "error", "match"),
    [
        ({"use_dora": True}, ConfigError, "use_dora"),
        ({"lora_bias": True}, ConfigError, "lora_bias"),
    ],
)
def test_refused_options_leave_the_model_unchanged(extra, error, match) -> None:
    model = Attend()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(error, match=match):
        peft.get_peft_model(model, peft.LoraConfig(target_modules=["mha"], **extra))
    assert type(model.mha) is nn.MultiheadAttention and type(model.mha.out_proj) is not peft.tuners.lora.Linear
    assert model.state_dict().keys() == before.keys()


def test_separate_projection_weights_are_refused() -> None:
    model = nn.Sequential(nn.MultiheadAttention(E, HEADS, kdim=6, vdim=6))
    with pytest.raises(TargetingError, match="kdim"):
        peft.get_peft_model(model, peft.LoraConfig(target_modules=["0"]))


def test_a_failed_injection_restores_out_proj() -> None:
    class Both(Attend):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(4, 4, 3, groups=4)

    model = Both()
    with pytest.raises(ConfigError, match="multiple of groups"):
        peft.get_peft_model(model, peft.LoraConfig(target_modules=["mha", "conv"], r=2))
    assert type(model.mha) is nn.MultiheadAttention
    assert type(model.mha.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear


def test_transformer_encoder_layer_in_eval_runs_the_adapter() -> None:
    """torch's fused encoder-layer kernel would read the attention's base weights and skip the adapter."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(E, HEADS, 16, dropout=0.0, batch_first=True)
    base = copy.deepcopy(layer).eval()
    model = peft.get_peft_model(layer, peft.LoraConfig(target_modules=["self_attn"], init_lora_weights=False))
    x = torch.randn(2, 5, E)
    with torch.no_grad():
        evaluated = model.eval()(x)
        trained_mode = model.train()(x)
    torch.testing.assert_close(evaluated, trained_mode, rtol=1e-5, atol=1e-5)  # dropout=0: same computation
    assert not torch.allclose(evaluated, base(x), atol=1e-3)


def test_training_moves_the_loss_and_leaves_the_base_unchanged() -> None:
    model, base = build()
    model.train()
    frozen = {k: v.clone() for k, v in base.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    x, target = torch.randn(5, 3, E), torch.randn(5, 3, 3)
    losses = []
    for _ in range(5):
        loss = F.mse_loss(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"base_model.model.{k}" for k in (
        "mha.lora_A.default.weight", "mha.lora_B.default.weight",
        "mha.base_layer.out_proj.lora_A.default.weight", "mha.base_layer.out_proj.lora_B.default.weight",
    )}  # fmt: skip
    unloaded = model.unload()
    for key, value in unloaded.state_dict().items():
        assert torch.equal(value, frozen[key]), key


@pytest.mark.parametrize("autocast", [True, False])
def test_adapter_dtype_follows_autocast_adapter_dtype(autocast: bool) -> None:
    """``autocast_adapter_dtype=False`` gives a bfloat16 base bfloat16 factors (input and output projection)."""
    model = Attend().to(torch.bfloat16)
    config = peft.LoraConfig(target_modules=["mha"], init_lora_weights=False)
    peft_model = peft.get_peft_model(model, config, autocast_adapter_dtype=autocast)
    peft_model.add_adapter("other", config, autocast_adapter_dtype=autocast)
    dtypes = {p.dtype for n, p in peft_model.named_parameters() if "lora_" in n}
    assert dtypes == {torch.float32 if autocast else torch.bfloat16}
    out = peft_model(torch.randn(5, 3, E, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16


def test_an_adapter_on_a_plain_attention_out_proj_is_flagged() -> None:
    """``all-linear`` picks ``mha.out_proj`` (as in PEFT); torch's attention never calls it, so the adapter does
    nothing: a warning says so, and the output is indeed the base's."""
    torch.manual_seed(0)
    model = Attend()
    base = copy.deepcopy(model)
    with pytest.warns(UserWarning, match=r"mha\.out_proj have no effect"):
        peft_model = peft.get_peft_model(model, peft.LoraConfig(target_modules=["out_proj"], init_lora_weights=False))
    x = torch.randn(5, 3, E)
    torch.testing.assert_close(peft_model(x), base(x))


def test_concurrent_forwards_from_threads_equal_the_single_thread_output() -> None:
    """Each forward swaps ``W + delta`` in for its call; another thread must never read (and add to) that."""
    model, _ = build()
    batches = [torch.randn(5, 3, E, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    with torch.no_grad():
        expected = [model(x) for x in batches]
    results: dict[int, list[torch.Tensor]] = {}

    def work(i: int) -> None:
        with torch.no_grad():
            results[i] = [model(batches[i]) for _ in range(20)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [0, 1, 2, 3]
    for i, outs in results.items():
        for out in outs:
            torch.testing.assert_close(out, expected[i])
