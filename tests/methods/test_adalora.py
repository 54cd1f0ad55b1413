"""AdaLoRA behaviour: the SVD-form forward ``y = base(x) + x (A*E)^T B^T * s / (ranknum + 1e-5)`` against a
formula, merging, the orthogonality penalty, the budget schedule, rank pruning during training (by hand and
through ``Trainer``), saving only the kept ranks and loading them back, and config errors."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments
from transformers.pytorch_utils import Conv1D

import peftkit as peft
from peftkit.methods.adalora.allocator import RankAllocator
from peftkit.methods.adalora.callback import AdaLoraCallback

EPS = 1e-5


def svd_delta(layer: nn.Module, adapter: str = "default") -> torch.Tensor:
    """Oracle: ``s * B (A * E) / (ranknum + eps)`` with ``s = alpha``, or ``r`` when ``alpha <= 0``."""
    A, E, B = (t[adapter].detach() for t in (layer.lora_A, layer.lora_E, layer.lora_B))
    alpha = layer.lora_alpha[adapter]
    s = alpha if alpha > 0 else A.shape[0]
    return s * (B @ (A * E)) / (layer.ranknum[adapter].item() + EPS)


def build(base: nn.Module, **kwargs: object) -> nn.Module:
    config = peft.AdaLoraConfig(target_modules=["0"], total_step=10, target_r=1, init_lora_weights=False, **kwargs)
    return peft.get_peft_model(nn.Sequential(base), config)


@pytest.mark.parametrize("alpha", [8, 0], ids=["alpha", "alpha<=0"])
@pytest.mark.parametrize("kind", ["linear", "gpt2_conv1d"])
def test_linear_forward_matches_formula(kind: str, alpha: int) -> None:
    torch.manual_seed(0)
    base = nn.Linear(6, 5) if kind == "linear" else Conv1D(5, 6)
    original = copy.deepcopy(base)
    model = build(base, init_r=3, lora_alpha=alpha)
    layer = model.base_model.model[0]
    assert tuple(layer.lora_A["default"].shape) == (3, 6)
    assert tuple(layer.lora_E["default"].shape) == (3, 1)
    assert tuple(layer.lora_B["default"].shape) == (5, 3)
    assert layer.ranknum["default"].item() == 3 and not layer.ranknum["default"].requires_grad
    x = torch.randn(2, 4, 6)
    torch.testing.assert_close(model(x), original(x) + x @ svd_delta(layer).T)


def test_conv2d_forward_matches_formula() -> None:
    torch.manual_seed(0)
    base = nn.Conv2d(3, 4, 3, padding=1, stride=2)
    original = copy.deepcopy(base)
    model = build(base, init_r=2)
    layer = model.base_model.model[0]
    assert tuple(layer.lora_A["default"].shape) == (2, 3 * 3 * 3)
    x = torch.randn(2, 3, 7, 7)
    kernel = svd_delta(layer).view(original.weight.shape)
    torch.testing.assert_close(model(x), original(x) + F.conv2d(x, kernel, stride=2, padding=1))


@pytest.mark.parametrize("kind", ["linear", "gpt2_conv1d", "conv2d"])
def test_merge_equals_unmerged_and_unmerge_restores(kind: str) -> None:
    torch.manual_seed(0)
    base, x = {
        "linear": (nn.Linear(6, 5), torch.randn(2, 6)),
        "gpt2_conv1d": (Conv1D(5, 6), torch.randn(2, 6)),
        "conv2d": (nn.Conv2d(3, 4, 3, padding=1), torch.randn(2, 3, 5, 5)),
    }[kind]
    original = copy.deepcopy(base)
    model = build(base, init_r=3)
    expected = model(x).detach()
    model.base_model.merge_adapter()
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    model.base_model.unmerge_adapter()
    torch.testing.assert_close(model.base_model.model[0].base_layer.weight, original.weight, atol=1e-6, rtol=0)
    torch.testing.assert_close(model.merge_and_unload()(x), expected, atol=1e-5, rtol=1e-5)


def test_mixed_batch_routes_each_sample_through_its_adapter() -> None:
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    original = copy.deepcopy(base)
    model = build(base, init_r=3)
    config = peft.AdaLoraConfig(target_modules=["0"], total_step=10, init_r=2, target_r=1, inference_mode=True)
    model.add_adapter("b", config)
    layer = model.base_model.model[0]
    with torch.no_grad():
        layer.lora_E["b"].normal_()
    x = torch.randn(3, 6)
    out = model.eval()(x, adapter_names=["b", "__base__", "default"])
    torch.testing.assert_close(out[0], original(x[0]) + x[0] @ svd_delta(layer, "b").T)
    torch.testing.assert_close(out[1], original(x[1]))
    torch.testing.assert_close(out[2], original(x[2]) + x[2] @ svd_delta(layer).T)


VOCAB = 40


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    shape = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, num_key_value_heads=1, **shape))


def batch(seed: int = 3) -> torch.Tensor:
    return torch.randint(0, VOCAB, (4, 10), generator=torch.Generator().manual_seed(seed))


def test_loss_carries_the_orthogonality_penalty() -> None:
    config = peft.AdaLoraConfig(total_step=10, init_r=3, target_r=2, orth_reg_weight=0.3)
    model = peft.get_peft_model(tiny_llama(), config)
    ids = batch()
    plain = model.base_model.model(input_ids=ids, labels=ids).loss
    norms = []
    for module in model.modules():
        if hasattr(module, "lora_E") and "default" in module.lora_E:
            A, B = module.lora_A["default"], module.lora_B["default"]
            norms += [torch.linalg.norm(A @ A.T - torch.eye(3)), torch.linalg.norm(B.T @ B - torch.eye(3))]
    assert len(norms) == 8  # q_proj and v_proj (llama's default) in 2 layers, A and B each
    expected = plain + 0.3 * torch.stack(norms).mean()
    torch.testing.assert_close(model(input_ids=ids, labels=ids).loss, expected)
    assert model(input_ids=ids).loss is None


def test_budget_schedule_is_cubic_between_warmup_and_final_phase() -> None:
    config = peft.AdaLoraConfig(total_step=20, tinit=4, tfinal=6, init_r=6, target_r=2, deltaT=3)
    model = peft.get_peft_model(tiny_llama(), config)
    allocator = RankAllocator(model.base_model.model, "default", model.peft_config["default"])
    assert (allocator.initial_budget, allocator.target_budget) == (24, 8)
    assert allocator.budget_at(4) == (24, False)
    for step in (5, 6, 9, 13):
        progress = 1 - (step - 4) / (20 - 6 - 4)
        assert allocator.budget_at(step) == (int(16 * progress**3 + 8), step % 3 == 0)
    assert allocator.budget_at(15) == (8, True)


def train(model: nn.Module, steps: int, allocate: bool = True) -> list[float]:
    """SGD on one batch; ``update_and_allocate`` after every step, as PEFT's docs show."""
    ids = batch()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.02)
    losses = []
    for step in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        if allocate:
            model.base_model.update_and_allocate(step)
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def kept_per_layer(model: nn.Module) -> dict[str, int]:
    return {k: sum(v) for k, v in model.peft_config["default"].rank_pattern.items()}


SCHEDULE = {"total_step": 30, "tinit": 4, "tfinal": 8, "init_r": 6, "target_r": 2, "deltaT": 2}


def test_training_prunes_ranks_to_the_budget_and_saves_only_kept_ranks(tmp_path: Path) -> None:
    model = peft.get_peft_model(tiny_llama(), peft.AdaLoraConfig(task_type="CAUSAL_LM", lora_alpha=32, **SCHEDULE))
    losses = train(model, 30)
    assert losses[-1] < 0.9 * losses[0]
    kept = kept_per_layer(model)
    assert len(kept) == 4 and sum(kept.values()) == 2 * 4  # target_r * number of adapted layers
    assert min(kept.values()) < 6  # some layer lost ranks
    for module_name, mask in model.peft_config["default"].rank_pattern.items():
        E = model.base_model.model.get_submodule(module_name.removesuffix(".lora_E")).lora_E["default"]
        assert E.shape[0] == 6 and bool((E[~torch.tensor(mask)] == 0).all())

    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())["rank_pattern"]
    assert saved == model.peft_config["default"].rank_pattern
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    for module_name, count in kept.items():
        prefix = "base_model.model." + module_name.removesuffix(".lora_E")
        assert tuple(tensors[f"{prefix}.lora_A"].shape) == (count, 16)
        assert tuple(tensors[f"{prefix}.lora_E"].shape) == (count, 1)
        assert tuple(tensors[f"{prefix}.lora_B"].shape)[1] == count
    assert not any("ranknum" in k for k in tensors)

    loaded = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path)
    q_proj = loaded.base_model.model.model.layers[0].self_attn.q_proj
    assert q_proj.r["default"] == kept["model.layers.0.self_attn.q_proj.lora_E"]
    assert q_proj.ranknum["default"].item() == 6  # the output is still divided by init_r
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=batch()).logits, model(input_ids=batch()).logits)


def test_trainer_callback_allocates_every_step(tmp_path: Path) -> None:
    schedule = {"total_step": 10, "tinit": 1, "tfinal": 3, "init_r": 4, "target_r": 1}
    model = peft.get_peft_model(tiny_llama(), peft.AdaLoraConfig(task_type="CAUSAL_LM", **schedule))
    rows = [{"input_ids": ids, "labels": ids} for ids in batch()]
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=10, per_device_train_batch_size=2, learning_rate=0.02,
        report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    Trainer(model=model, args=args, train_dataset=rows, callbacks=[AdaLoraCallback()]).train()
    assert sum(kept_per_layer(model).values()) == 1 * 4


def test_only_one_adapter_trains() -> None:
    model = peft.get_peft_model(tiny_llama(), peft.AdaLoraConfig(total_step=10))
    with pytest.raises(peft.ConfigError, match="only 1 trainable adapter"):
        model.add_adapter("second", peft.AdaLoraConfig(total_step=10))
    model.add_adapter("frozen", peft.AdaLoraConfig(total_step=10, inference_mode=True))
    assert model.base_model.trainable_adapter_name == "default"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"total_step": 10, "init_r": 4, "target_r": 6}, peft.ConfigError, "exceeds init_r"),
        ({}, peft.ConfigError, "needs total_step"),
        ({"total_step": 0}, peft.ConfigError, "needs total_step"),
        ({"total_step": 10, "tinit": 6, "tfinal": 4}, peft.ConfigError, "no budgeting phase"),
        ({"total_step": 10, "beta1": 1.0}, peft.ConfigError, "beta1"),
        ({"total_step": 10, "orth_reg_weight": -1}, peft.ConfigError, "orth_reg_weight"),
        ({"total_step": 10, "use_dora": True}, peft.ConfigError, "DoRA"),
        ({"total_step": 10, "init_lora_weights": "pissa"}, peft.UnsupportedError, "True or False"),
        ({"total_step": 10, "rank_pattern": {"q.lora_E": 3}}, peft.ConfigError, "list of booleans"),
    ],
)
def test_config_errors_say_what_to_change(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        peft.AdaLoraConfig(**kwargs)


def test_r_is_ignored_with_a_warning() -> None:
    with pytest.warns(UserWarning, match="init_r"):
        peft.AdaLoraConfig(total_step=10, r=4)
