"""Adapters that run their base module with a swapped-in weight (LoRA on ``nn.MultiheadAttention``, LoRA on
parameters) under FSDP1 with ``use_orig_params=True``: FSDP puts its unsharded views in the module's ``__dict__``
for the forward, which shadowed a swap of the parameter table only (the adapter then silently did nothing). One
process (gloo, world size 1, in-memory store), as PEFT's own FSDP round-trip tests run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

import peftkit as peft

# torch's notice for a world of one process (the sharding strategy it then uses does not matter here).
pytestmark = pytest.mark.filterwarnings("ignore:FSDP is switching to use `NO_SHARD`:UserWarning")


@pytest.fixture
def process_group() -> Iterator[None]:
    dist.init_process_group(backend="gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


class Attend(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(10, 2)
        self.lin0 = nn.Linear(10, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin0(self.mha(x, x, x)[0])


class Experts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 6, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("eoi,bi->bo", self.w, x)


class Routed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.experts = Experts()
        self.lin = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(self.experts(x))


CASES = {
    "multihead_attention": (Attend, {"target_modules": ["mha"]}, (9, 10)),
    "target_parameters": (Routed, {"target_modules": [], "target_parameters": ["experts.w"]}, (5, 4)),
}


@pytest.mark.usefixtures("process_group")
@pytest.mark.parametrize("case", sorted(CASES))
def test_fsdp_wrapped_forward_and_state_dict_round_trip(case: str) -> None:
    factory, fields, shape = CASES[case]
    torch.manual_seed(0)
    model = peft.get_peft_model(factory(), peft.LoraConfig(init_lora_weights=False, **fields)).eval()
    x = torch.randn(shape)
    with torch.no_grad():
        plain = model(x)
        base = model.get_base_model()
        with model.disable_adapter():
            assert not torch.allclose(base(x), plain, atol=1e-4)
    wrapped = FSDP(model, use_orig_params=True, device_id=torch.device("cpu"))
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), plain)
    state = peft.get_peft_model_state_dict(wrapped)
    torch.manual_seed(0)
    fresh = peft.get_peft_model(factory(), peft.LoraConfig(**fields)).eval()
    peft.set_peft_model_state_dict(fresh, state)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), plain)
