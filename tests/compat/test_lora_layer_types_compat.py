"""LoRA on grouped convolutions (LoRA and DoRA) and on ``nn.MultiheadAttention`` against the reference peft 0.21.2:
saved by one library and loaded by the other with the same outputs (unmerged; merged where the layer merges),
and, built by both, the same config JSON, tensor keys and shapes and the same trainable-parameter line."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import ModuleType

import pytest
import torch
from tests._tiny import randomise_adapter
from tests.compat._cross import LIBS, printed_parameters, saved_files
from torch import nn

# The reference's notices from inside its own MultiheadAttention merge (its out_proj layer is merged twice over).
pytestmark = pytest.mark.filterwarnings(
    "ignore:All adapters are already merged:UserWarning", "ignore:Already unmerged:UserWarning"
)


class GroupedConvs(nn.Module):
    """Grouped Conv1d / Conv2d / Conv3d in a row (each reshapes its input), then a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(8, 8, 3, groups=2, padding=1)
        self.c2 = nn.Conv2d(8, 12, 3, groups=4, padding=1)
        self.c3 = nn.Conv3d(12, 4, 1, groups=4)
        self.head = nn.Linear(4 * 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 8, 16)
        y = torch.relu(self.c1(x)).view(-1, 8, 4, 4)
        y = torch.relu(self.c2(y)).view(-1, 12, 2, 2, 4)
        return self.head(self.c3(y).flatten(1))


class Attention(nn.Module):
    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(8, 2, batch_first=batch_first)
        self.lin0 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin0(self.mha(x, x, x)[0])


MODELS = {
    "grouped": (GroupedConvs, (2, 8, 16)),
    "mha_seq_first": (lambda: Attention(False), (5, 2, 8)),
    "mha_batch_first": (lambda: Attention(True), (2, 5, 8)),
}
CASES = {
    "grouped_lora": ("grouped", {"target_modules": ["c1", "c2", "c3"], "r": 4, "lora_alpha": 6}),
    "grouped_dora": ("grouped", {"target_modules": ["c1", "c2", "c3"], "r": 4, "use_dora": True}),
    "mha_seq_first": ("mha_seq_first", {"target_modules": ["mha"], "r": 2, "lora_alpha": 5}),
    "mha_batch_first_with_linear": ("mha_batch_first", {"target_modules": ["mha", "lin0"], "use_rslora": True}),
}


def build(kind: str) -> nn.Module:
    torch.manual_seed(0)
    return MODELS[kind][0]().eval()


def create(lib: ModuleType, case: str, name: str = "default") -> nn.Module:
    kind, fields = CASES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # both libraries warn that grouped-conv adapters do not merge
        model = lib.get_peft_model(build(kind), lib.LoraConfig(**fields), adapter_name=name)
    randomise_adapter(model)
    return model.eval()


def output(model: nn.Module, kind: str) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.randn(MODELS[kind][1], generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize(("source", "target"), [("peft", "peftkit"), ("peftkit", "peft")])
def test_cross_load(case: str, source: str, target: str, tmp_path: Path) -> None:
    kind = CASES[case][0]
    saved = create(LIBS[source], case, name="other")
    saved.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = LIBS[target].PeftModel.from_pretrained(build(kind), tmp_path / "other", adapter_name="other").eval()
    expected = output(saved, kind)
    assert not torch.allclose(expected, output(build(kind), kind), atol=1e-3)
    torch.testing.assert_close(output(loaded, kind), expected, atol=1e-5, rtol=1e-5)
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {k: v.shape for k, v in saved.state_dict().items()}
    if kind == "grouped":  # neither library merges a grouped convolution's adapter
        with pytest.raises(NotImplementedError):
            loaded.merge_and_unload()
        torch.testing.assert_close(output(loaded, kind), expected, atol=1e-5, rtol=1e-5)
        return
    loaded.merge_adapter()
    torch.testing.assert_close(output(loaded, kind), expected, atol=1e-5, rtol=1e-5)
    loaded.unmerge_adapter()
    torch.testing.assert_close(output(loaded.merge_and_unload(), kind), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_saved_files_and_parameter_counts_match(case: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    results = {}
    for lib_name, lib in LIBS.items():
        model = create(lib, case)
        model.save_pretrained(tmp_path / lib_name)
        results[lib_name] = (*saved_files(tmp_path / lib_name), printed_parameters(model, capsys))
    assert results["peftkit"] == results["peft"]


def two_adapters(lib: ModuleType, kind: str, targets: list[str]) -> nn.Module:
    """Adapters ``a`` and ``b`` (rank 4) with the same random factors in both libraries."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = lib.get_peft_model(build(kind), lib.LoraConfig(target_modules=targets, r=4), "a")
        model.add_adapter("b", lib.LoraConfig(target_modules=targets, r=4))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "lora_" in name:
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    return model.eval()


@pytest.mark.parametrize(
    ("kind", "combination"),
    [("mha_seq_first", "linear"), ("mha_seq_first", "cat"), ("mha_seq_first", "svd"), ("grouped", "linear"),
     ("grouped", "cat")],
)  # fmt: skip
def test_weighted_combinations_match(kind: str, combination: str) -> None:
    targets = ["mha"] if kind.startswith("mha") else ["c1", "c2", "c3"]
    outputs = []
    for lib in (LIBS["peft"], LIBS["peftkit"]):
        model = two_adapters(lib, kind, targets)
        model.add_weighted_adapter(["a", "b"], [0.7, 0.5], "mix", combination_type=combination)
        model.set_adapter("mix")
        outputs.append(output(model, kind))
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=1e-5)


def test_svd_combination_of_grouped_convolutions_is_refused_cleanly() -> None:
    """The reference fails inside its convolution call; peftkit says why, and adds nothing."""
    model = two_adapters(LIBS["peftkit"], "grouped", ["c1", "c2", "c3", "head"])
    with pytest.raises(NotImplementedError, match="groups"):
        model.add_weighted_adapter(["a", "b"], [0.7, 0.5], "mix", combination_type="svd")
    assert set(model.peft_config) == {"a", "b"}
    assert not any(".mix." in name for name, _ in model.named_parameters())
