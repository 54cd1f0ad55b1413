"""BOFT compatibility with the reference peft 0.21.2: adapters saved by one library load in the other with the
same outputs (unmerged and merged); both save the same files and count the same parameters.

The reference computes more than one butterfly factor only through its CUDA extension (without it, it silently
uses one factor). Here its extension is replaced: by "not available" (its pure-torch path, one factor, no
compile attempt) or, for several factors, by a pure-torch stand-in of the extension's block-diagonal kernel, so
that the reference's own permutations and products are the oracle for peftkit's butterfly factors.
"""

from __future__ import annotations

from typing import Any

import peft
import peft.tuners.boft.layer as reference_boft
import pytest
import torch
from tests.compat._cross import Adapter, compat_tests

import peftkit

TARGETS = {"target_modules": ["q_proj", "v_proj", "down_proj"]}


class BlockDiagonalStandIn:
    """The reference's ``fbd_cuda`` kernel in plain torch: ``(N, D, b, b) -> (N, D b, D b)`` block-diagonals."""

    @staticmethod
    def forward(blocks: torch.Tensor) -> list[torch.Tensor]:
        return [torch.stack([torch.block_diag(*factor.unbind(0)) for factor in blocks])]


CASES = [
    Adapter("llama", "BOFTConfig", {**TARGETS, "boft_block_size": 4, "task_type": "CAUSAL_LM"}),
    Adapter("by_count", "BOFTConfig", {**TARGETS, "boft_block_size": 0, "boft_block_num": 8}, name="other"),
    Adapter("bias_modules_to_save", "BOFTConfig", {**TARGETS, "bias": "boft_only", "modules_to_save": ["lm_head"]}),
    Adapter("conv", "BOFTConfig", {"target_modules": ["conv", "lin"], "boft_block_size": 3}, "convnet"),
    Adapter("butterfly_2", "BOFTConfig", {**TARGETS, "boft_block_size": 2, "boft_n_butterfly_factor": 2}),
    Adapter(
        "butterfly_3",
        "BOFTConfig",
        {**TARGETS, "boft_block_num": 4, "boft_block_size": 0, "boft_n_butterfly_factor": 3},
    ),
]


@pytest.fixture(autouse=True)
def reference_kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference's CUDA extension: the stand-in for adapters with several factors, else "not available"."""
    callspec = getattr(request.node, "callspec", None)  # absent on an unparametrized test
    adapter: Any = callspec.params.get("adapter") if callspec is not None else None
    several = adapter is not None and adapter.fields.get("boft_n_butterfly_factor", 1) > 1
    monkeypatch.setattr(reference_boft, "get_fbd_cuda", lambda: BlockDiagonalStandIn if several else None)


test_cross_load, test_saved_files_and_parameter_counts_match = compat_tests(CASES, CASES)


def test_a_grouped_conv2d_is_refused_with_the_references_exception_type() -> None:
    """BOFT on a Conv2d with ``groups > 1``: both libraries raise ``NotImplementedError`` (peftkit's
    ``UnsupportedError``) at injection, and the model keeps its plain layer."""
    for lib in (peft, peftkit):
        model = torch.nn.Sequential(torch.nn.Conv2d(8, 8, kernel_size=3, groups=2))
        with pytest.raises(NotImplementedError):
            lib.get_peft_model(model, lib.BOFTConfig(target_modules=["0"], boft_block_size=4))
        assert type(model[0]) is torch.nn.Conv2d
