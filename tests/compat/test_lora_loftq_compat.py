"""LoftQ against the reference. The reference's ``loftq_init`` and ``replace_lora_weights_loftq`` compute on CUDA
(or XPU) only, so on a CPU machine the comparison covers its low-rank step (bit for bit) and the config files both
ways; with CUDA, whole initialisations are compared (same quantized base and factors)."""

from __future__ import annotations

import copy
from pathlib import Path

import peft
import pytest
import torch
from peft.utils.loftq_utils import _low_rank_decomposition
from peft.utils.loftq_utils import loftq_init as reference_loftq_init
from tests._tiny import build_model

import peftkit
from peftkit.methods.lora.loftq import loftq_init, low_rank_decomposition

pytest.importorskip("bitsandbytes")


@pytest.mark.parametrize("shape", [(24, 40), (40, 24)])
def test_low_rank_step_matches_the_reference(shape: tuple[int, int]) -> None:
    weight = torch.randn(*shape)
    L, R = low_rank_decomposition(weight, 5)
    expected = _low_rank_decomposition(weight, reduced_rank=5)
    assert torch.equal(L, expected["L"]) and torch.equal(R, expected["R"])


@pytest.mark.parametrize("writer", ["peft", "peftkit"])
def test_loftq_configs_move_both_ways(writer: str, tmp_path: Path) -> None:
    write_lib, read_lib = (peft, peftkit) if writer == "peft" else (peftkit, peft)
    config = write_lib.LoraConfig(
        r=4, target_modules=["q_proj"], init_lora_weights="loftq", loftq_config=write_lib.LoftQConfig(loftq_bits=8)
    )
    config.save_pretrained(tmp_path)
    loaded = read_lib.LoraConfig.from_pretrained(tmp_path)
    assert loaded.init_lora_weights == "loftq"
    assert loaded.loftq_config == {"loftq_bits": 8, "loftq_iter": 1}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the reference's LoftQ computes on CUDA only")
@pytest.mark.parametrize(("bits", "iters"), [(4, 1), (4, 2), (8, 1)])
def test_same_quantized_base_and_factors_as_the_reference_on_cuda(bits: int, iters: int) -> None:
    weight = torch.randn(32, 64, device="cuda")
    ours = loftq_init(weight, bits, 4, iters)
    theirs = reference_loftq_init(weight, num_bits=bits, reduced_rank=4, num_iter=iters)
    for mine, reference in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, reference.to(mine.device), rtol=0, atol=0)
    base = build_model("llama").cuda()
    fields = {"r": 4, "lora_alpha": 4, "target_modules": ["q_proj"], "init_lora_weights": "loftq"}
    ref = peft.get_peft_model(
        copy.deepcopy(base), peft.LoraConfig(loftq_config=peft.LoftQConfig(bits, iters), **fields)
    )
    kit = peftkit.get_peft_model(
        copy.deepcopy(base), peftkit.LoraConfig(loftq_config={"loftq_bits": bits, "loftq_iter": iters}, **fields)
    )
    ref_state, kit_state = ref.state_dict(), kit.state_dict()
    for key, value in ref_state.items():
        torch.testing.assert_close(kit_state[key], value, rtol=0, atol=0, msg=key)
