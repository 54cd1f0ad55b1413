"""OFT and BOFT behaviour beyond the single-adapter formula (``tests/reference/test_oft.py``, ``test_boft.py``):
several active adapters compose as the reference does, COFT keeps each block on its ball, multiplicative dropout
replaces whole blocks by the identity in training only, training lowers a loss with the base bit-identical,
bad configs raise peftkit errors that say what to change, and the command line knows both methods."""

from __future__ import annotations

import itertools
import json
import warnings

import pytest
import torch
from torch import nn

import peftkit as peft
from peftkit.cli.main import main
from peftkit.errors import ConfigError, TargetingError
from peftkit.methods.boft.butterfly import butterfly_permutation
from peftkit.methods.oft.orthogonal import _upper_indices, skew_from_upper


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))


def random_config(method: str, **extra: object) -> peft.PeftConfig:
    if method == "oft":
        return peft.OFTConfig(target_modules=["0", "2"], oft_block_size=4, r=0, init_weights=False, **extra)
    return peft.BOFTConfig(target_modules=["0", "2"], boft_block_size=2, boft_n_butterfly_factor=2, init_weights=False)


def single(method: str, adapter: str, state: dict[str, torch.Tensor]) -> nn.Module:
    """A model holding only ``adapter`` with the tensors of ``state``."""
    model = peft.get_peft_model(mlp(), random_config(method), adapter_name=adapter)
    model.load_state_dict(state, strict=False)
    return model


@pytest.mark.parametrize("method", ["oft", "boft"])
def test_two_active_adapters_compose_like_their_sequential_merges(method: str) -> None:
    """``x R_b R_a`` (OFT; BOFT: ``x M_b M_a`` with ``s_a s_b``): what merging ``a`` then ``b`` writes, so merging
    several active adapters keeps the output."""
    model = peft.get_peft_model(mlp(), random_config(method), adapter_name="a")
    model.add_adapter("b", random_config(method))
    model.base_model.set_adapter(["a", "b"])
    x = torch.randn(5, 8)
    both = model(x)
    layer = model.base_model.model[0]
    base = layer.get_base_layer()
    if method == "oft":
        expected = base(layer.adapt_input(layer.adapt_input(x, "b"), "a"))
    else:
        rotated = x @ layer.rotation("b") @ layer.rotation("a")
        scale = (layer.boft_s["a"] * layer.boft_s["b"]).flatten()
        expected = (rotated @ base.weight.T) * scale + base.bias
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(both, single(method, "a", model.state_dict())(x), atol=1e-4)
    with torch.no_grad():
        model.merge_adapter()
        torch.testing.assert_close(model(x), both, rtol=1e-5, atol=1e-5)
        model.unmerge_adapter()
        torch.testing.assert_close(model(x), both, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("method", "module", "x"),
    [
        ("oft", nn.Conv2d(2, 3, 3, padding=1), torch.randn(2, 2, 5, 5)),
        ("oft", nn.Embedding(10, 8), torch.tensor([[1, 5, 9]])),
        ("boft", nn.Conv2d(2, 3, 2), torch.randn(2, 2, 5, 5)),
    ],
    ids=["oft-conv2d", "oft-embedding", "boft-conv2d"],
)
def test_two_active_adapters_on_conv_and_embedding_merge_to_the_same_output(method, module, x) -> None:
    if method == "oft":
        make = lambda: peft.OFTConfig(target_modules=["0"], oft_block_size=2, r=0, init_weights=False)  # noqa: E731
    else:
        make = lambda: peft.BOFTConfig(target_modules=["0"], boft_block_size=2, init_weights=False)  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # OFT on a 3x3 kernel says how the reference differs
        model = peft.get_peft_model(nn.Sequential(module), make(), adapter_name="a")
        model.add_adapter("b", make())
    model.base_model.set_adapter(["a", "b"])
    with torch.no_grad():
        both = model(x)
        assert not torch.allclose(both, model.base_model.model[0].adapted_forward(x, ["a"]), atol=1e-4)
        model.merge_adapter()
        torch.testing.assert_close(model(x), both, rtol=1e-5, atol=1e-5)


def test_coft_projects_each_block_onto_its_ball_in_place() -> None:
    eps, rows = 0.2, 4
    model = peft.get_peft_model(mlp(), random_config("oft", coft=True, eps=eps))
    layer = model.base_model.model[2]  # 16 features: 4 blocks of 4
    with torch.no_grad():
        stored = layer.oft_R["default"].weight
        stored.mul_(10.0)
        stored[0].mul_(1e-4)  # one block well inside the ball: kept as is
    inside = stored[0].detach().clone()
    model(torch.randn(2, 8))
    norms = torch.linalg.matrix_norm(skew_from_upper(stored.detach(), 4))
    torch.testing.assert_close(norms[1:], torch.full((rows - 1,), eps / rows**0.5), rtol=1e-5, atol=0)
    assert torch.equal(stored[0].detach(), inside)


@pytest.mark.parametrize("method", ["oft", "boft"])
def test_dropout_sets_whole_blocks_to_the_identity_in_training_only(method: str) -> None:
    if method == "oft":
        config = peft.OFTConfig(target_modules=["0"], oft_block_size=2, r=0, init_weights=False, module_dropout=0.5)
    else:
        config = peft.BOFTConfig(target_modules=["0"], boft_block_size=2, init_weights=False, boft_dropout=0.5)
    model = peft.get_peft_model(mlp(), config)
    layer = model.base_model.model[0]  # 8 features: 4 blocks of 2
    x = torch.randn(3, 8)
    model.eval()
    full = layer(x)
    model.train()
    dropped = layer(x)
    # the output of each subset of exactly 2 identity blocks, from the stored tensors
    candidates = []
    for keep in itertools.combinations(range(4), 2):
        with torch.no_grad():
            masked = single_layer_with_identity_blocks(layer, method, keep)
        candidates.append(masked(x))
    assert not torch.allclose(dropped, full, atol=1e-4)
    assert any(torch.allclose(dropped, c, atol=1e-5) for c in candidates)


def single_layer_with_identity_blocks(layer: nn.Module, method: str, keep: tuple[int, ...]) -> nn.Module:
    """A copy of ``layer`` in eval mode whose blocks outside ``keep`` are the identity (zero parameters)."""
    import copy

    clone = copy.deepcopy(layer).eval()
    stored = clone.oft_R["default"].weight if method == "oft" else clone.boft_R["default"][0]
    for index in set(range(4)) - set(keep):
        stored[index].zero_()
    return clone


@pytest.mark.parametrize("method", ["oft", "boft"])
def test_training_lowers_the_loss_and_leaves_the_base_bit_identical(method: str) -> None:
    model = peft.get_peft_model(mlp(), random_config(method))
    base = {k: v.clone() for k, v in model.state_dict().items() if "base_layer" in k}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(("oft_R" in n or "boft_" in n) for n, p in model.named_parameters() if p.requires_grad)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 8, generator=gen), torch.randn(64, 4, generator=gen)
    optimizer = torch.optim.Adam(trainable, lr=2e-2)
    losses = []
    for _ in range(30):
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items())


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: peft.OFTConfig(r=4), "set exactly one of oft_block_size and r"),
        (lambda: peft.OFTConfig(oft_block_size=0), "set exactly one of oft_block_size and r"),
        (lambda: peft.OFTConfig(module_dropout=1.0), "module_dropout must be a probability in [0, 1)"),
        (lambda: peft.OFTConfig(num_cayley_neumann_terms=1), "use 2 or more"),
        (lambda: peft.OFTConfig(bias="lora_only"), "bias"),
        (lambda: peft.OFTConfig(eps=0.0), "eps (COFT's radius) must be a positive"),
        (lambda: peft.BOFTConfig(boft_block_size=4, boft_block_num=2), "set exactly one of boft_block_size and"),
        (lambda: peft.BOFTConfig(boft_n_butterfly_factor=0), "boft_n_butterfly_factor must be an integer from 1"),
        (lambda: peft.BOFTConfig(boft_dropout=-0.1), "boft_dropout must be a probability"),
    ],
)
def test_bad_configs_name_the_field(make, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[").replace(")", r"\)")):
        make()


@pytest.mark.parametrize(
    ("config", "error", "message"),
    [
        (peft.BOFTConfig(target_modules=["0"], boft_block_size=3), ConfigError, r"boft_block_size=3 does not divide"),
        (peft.BOFTConfig(target_modules=["2"], boft_block_size=6), ConfigError, r"nearest: 4 or 8"),
        (
            peft.BOFTConfig(target_modules=["0"], boft_block_size=4, boft_n_butterfly_factor=3),
            ConfigError,
            r"boft_n_butterfly_factor=3 does not fit module '0'.*multiple of .* 16",
        ),
    ],
)
def test_a_block_split_that_does_not_fit_a_layer_is_refused_and_the_model_kept(config, error, message) -> None:
    model = mlp()
    before = [type(m) for m in model.modules()]
    with pytest.raises(error, match=message):
        peft.get_peft_model(model, config)
    assert [type(m) for m in model.modules()] == before


@pytest.mark.parametrize("method", ["oft", "boft"])
@pytest.mark.parametrize(
    "conv",
    [nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 4, 3, dilation=2), nn.Conv2d(4, 4, (3, 1))],
    ids=["groups", "dilation", "non_square"],
)
def test_convolutions_outside_the_format_are_refused(method: str, conv: nn.Conv2d) -> None:
    config = (
        peft.OFTConfig(target_modules=["0"], oft_block_size=2)
        if method == "oft"
        else peft.BOFTConfig(target_modules=["0"], boft_block_size=2)
    )
    error = peft.UnsupportedError if conv.groups > 1 else TargetingError  # PEFT's BOFT: NotImplementedError
    with pytest.raises(error, match="leave it out of target_modules"):
        peft.get_peft_model(nn.Sequential(conv), config)


@pytest.mark.parametrize(
    ("method", "options", "field"),
    [
        ("oft", ["--oft-block-size", "8"], "oft_block_size"),
        ("boft", ["--boft-n-butterfly-factor", "2"], "boft_block_size"),
    ],
)
def test_command_line_trains_and_inspects(method: str, options: list[str], field: str, tmp_path, capsys) -> None:
    """``peftkit train --method oft|boft`` on a small data file writes a PEFT-format adapter that ``inspect``
    reads: its method, its targets and one row per adapted module with the number of blocks."""
    rows = [{"question": f"{i}+1=", "answer": str(i + 1)} for i in range(20)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    argv = ["train", "--method", method, *options, "--data", str(tmp_path / "d.jsonl"), "--max-steps", "2"]
    assert main([*argv, "--output-dir", str(out), "--target-modules", "q_proj,v_proj"]) == 0
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == method.upper() and config[field] == (8 if method == "oft" else 4)
    capsys.readouterr()
    assert main(["inspect", str(out / "adapter")]) == 0
    report = capsys.readouterr().out
    assert f"{method.upper()} (task CAUSAL_LM)" in report
    assert len([line for line in report.splitlines() if ".self_attn." in line]) == 8  # 4 layers x q, v


def test_loading_a_neumann_adapter_from_before_peft_0_18_warns(tmp_path) -> None:
    """PEFT 0.18 changed the Cayley-Neumann series; an older file loads, with a warning to retrain it."""
    peft.get_peft_model(mlp(), random_config("oft")).save_pretrained(tmp_path)
    config_path = tmp_path / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "peft_version": "0.17.1"}))
    with pytest.warns(UserWarning, match="saved by PEFT 0.17.1, whose Cayley-Neumann series differed"):
        peft.PeftModel.from_pretrained(mlp(), tmp_path)
    config_path.write_text(json.dumps({**config, "peft_version": "0.17.1", "use_cayley_neumann": False}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        peft.PeftModel.from_pretrained(mlp(), tmp_path)


@pytest.mark.parametrize("method", ["oft", "boft"])
def test_a_bitsandbytes_int8_base_gives_the_reference_outputs_and_unmerges_exactly(method: str, monkeypatch) -> None:
    """The rotation acts on the input (and BOFT's scale on the output), so a quantized base needs nothing
    special; merging goes through the quantization backend and unmerging restores the packed weight."""
    import bitsandbytes as bnb
    import peft as reference
    import peft.tuners.boft.layer as reference_boft

    monkeypatch.setattr(reference_boft, "get_fbd_cuda", lambda: None)  # its pure-torch path, no compile attempt

    def quantized() -> nn.Sequential:
        torch.manual_seed(0)
        dense = nn.Linear(16, 8)
        layer = bnb.nn.Linear8bitLt(16, 8, has_fp16_weights=False)
        layer.load_state_dict(dense.state_dict())
        return nn.Sequential(layer)

    fields = {"oft_block_size": 4, "r": 0} if method == "oft" else {"boft_block_size": 4}
    name = "OFTConfig" if method == "oft" else "BOFTConfig"
    theirs = reference.get_peft_model(quantized(), getattr(reference, name)(target_modules=["0"], **fields))
    ours = peft.get_peft_model(quantized(), getattr(peft, name)(target_modules=["0"], **fields))
    with torch.no_grad():
        for param in theirs.parameters():
            if param.requires_grad:
                param.add_(0.2 * torch.randn(param.shape))
    ours.load_state_dict({k: v for k, v in theirs.state_dict().items() if "oft_" in k}, strict=False)
    x = torch.randn(3, 16)
    expected = theirs(x)
    torch.testing.assert_close(ours(x), expected, rtol=0, atol=1e-6)
    base = ours.base_model.model[0].get_base_layer()
    packed = base.weight.data.clone()
    with pytest.warns(UserWarning, match="quantized again"):
        ours.merge_adapter()
    assert (ours(x) - expected).abs().max() < 0.1 * (expected - base(x)).abs().max() + 0.02
    ours.unmerge_adapter()
    assert torch.equal(base.weight.data, packed)


@pytest.mark.parametrize("second_block", [4, 2], ids=["same_blocks_gathered", "other_blocks_grouped"])
def test_oft_mixed_batch_rows_equal_their_single_adapter_outputs(second_block: int) -> None:
    model = peft.get_peft_model(mlp(), random_config("oft"), adapter_name="a")
    model.add_adapter("b", peft.OFTConfig(target_modules=["0", "2"], oft_block_size=second_block, init_weights=False))
    model.eval()
    x = torch.randn(4, 3, 8)
    route = ["b", "__base__", "a", "b"]
    with torch.no_grad():
        mixed = model(x, adapter_names=route)
        for i, name in enumerate(route):
            if name == "__base__":
                with model.disable_adapter():
                    alone = model(x[i : i + 1])
            else:
                model.set_adapter(name)
                alone = model(x[i : i + 1])
            torch.testing.assert_close(mixed[i : i + 1], alone, rtol=1e-5, atol=1e-6, msg=f"sample {i} ({name})")


@pytest.mark.parametrize("method", ["oft", "boft"])
def test_training_works_after_a_first_forward_in_inference_mode(method: str) -> None:
    """The cached block indices / butterfly permutations are made outside inference mode even when first needed
    inside it (else the next training forward fails: autograd cannot save inference tensors)."""
    _upper_indices.cache_clear()
    butterfly_permutation.cache_clear()
    model = peft.get_peft_model(mlp(), random_config(method))
    x = torch.randn(3, 8)
    with torch.inference_mode():
        expected = model(x)
    model.train()
    output = model(x)
    output.sum().backward()
    torch.testing.assert_close(output.detach(), expected)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
