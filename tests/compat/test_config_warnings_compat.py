"""Warnings PEFT gives about a config that does not do what it says, given in the same cases by peftkit (each
case run through the reference peft 0.21.2 too; the wording is peftkit's own): an ``exclude_modules`` that
excludes nothing, a tied word embedding adapted without ``ensure_weight_tying``, and PiSSA / OLoRA with rsLoRA and
a rank or alpha pattern (their conversion to a plain LoRA cannot recover the scaling)."""

from __future__ import annotations

import itertools
import warnings
from typing import Any

import peft
import pytest
import torch
from torch import nn

import peftkit


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin0 = nn.Linear(6, 6)
        self.lin1 = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin1(self.lin0(x))


class _Config:
    def __init__(self, tie_word_embeddings: bool) -> None:
        self.tie_word_embeddings = tie_word_embeddings

    def to_dict(self) -> dict[str, Any]:
        return {"tie_word_embeddings": self.tie_word_embeddings}


class TiedLM(nn.Module):
    """A causal-LM-shaped toy that ties by assignment (``lm_head.weight = embed_tokens.weight``), as custom models do;
    ``_tied_weights_keys`` is how the reference finds the tie."""

    def __init__(self, tie: bool, config_says: bool | None = None) -> None:
        super().__init__()
        if tie:
            self._tied_weights_keys = ["lm_head.weight"]
        if config_says is not None:
            self.config = _Config(config_says)
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(16, 8)
        self.model.linear = nn.Linear(8, 8)
        self.lm_head = nn.Linear(8, 16, bias=False)
        if tie:
            self.lm_head.weight = self.model.embed_tokens.weight

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.model.linear(self.model.embed_tokens(ids)))


def _user_warnings(make: Any) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make()
    return [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def _warns_like_reference(make: Any, needle_ours: str, needle_theirs: str) -> bool:
    """Run ``make(lib)`` with both libraries; assert both give (or both omit) the warning; return whether given."""
    ours = any(needle_ours in m for m in _user_warnings(lambda: make(peftkit)))
    theirs = any(needle_theirs in m for m in _user_warnings(lambda: make(peft)))
    assert ours == theirs
    return ours


@pytest.mark.parametrize(
    ("exclude", "to_save", "expected"),
    [
        (["nowhere"], None, True),
        ("no.*where", None, True),
        (["lin0"], None, False),
        ("lin0", None, False),
        (["nowhere"], ["lin0"], False),  # modules_to_save keeps a module out: the reference counts it as excluded
        (None, None, False),
    ],
)
@pytest.mark.parametrize("kind", ["LoraConfig", "IA3Config"])
def test_exclude_modules_that_exclude_nothing_warn(exclude: Any, to_save: Any, expected: bool, kind: str) -> None:
    def make(lib: Any) -> Any:
        extra = {"feedforward_modules": []} if kind == "IA3Config" else {}
        config = getattr(lib, kind)(target_modules=["lin1"], exclude_modules=exclude, modules_to_save=to_save, **extra)
        return lib.get_peft_model(Net(), config)

    assert _warns_like_reference(make, "exclude_modules=", "but no modules were excluded") == expected


@pytest.mark.parametrize(
    ("tie", "to_save", "targets"),
    [
        (True, ["lm_head"], ["linear"]),
        (True, ["embed_tokens"], ["linear"]),
        (True, ["embed_tokens", "lm_head"], ["linear"]),
        (True, None, ["linear", "embed_tokens"]),
        (True, None, ["linear"]),
        (False, ["lm_head"], ["linear"]),
        (False, None, ["linear", "embed_tokens"]),
    ],
)
def test_tied_layer_without_ensure_weight_tying_warns(tie: bool, to_save: Any, targets: list[str]) -> None:
    def make(lib: Any) -> Any:
        torch.manual_seed(0)
        return lib.get_peft_model(TiedLM(tie), lib.LoraConfig(target_modules=targets, modules_to_save=to_save))

    given = _warns_like_reference(make, "ensure_weight_tying=False", "`ensure_weight_tying` is not set to True")
    assert given == (tie and (to_save is not None or "embed_tokens" in targets))


def test_ensure_weight_tying_on_a_tie_by_assignment_ties_the_adapters() -> None:
    """The tie found without ``get_output_embeddings``: the head's LoRA factors are the embedding's, as in peft."""
    torch.manual_seed(0)
    model = peftkit.get_peft_model(
        TiedLM(True), peftkit.LoraConfig(target_modules=["embed_tokens"], ensure_weight_tying=True)
    )
    inner = model.base_model.model
    assert (
        inner.lm_head.lora_A["default"].weight.data_ptr()
        == inner.model.embed_tokens.lora_embedding_B["default"].data_ptr()
    )


class TiedLMWithHead(TiedLM):
    """With transformers' accessor for the head (the reference's save needs it to find embedding layers)."""

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head


class TiedSeq2Seq(nn.Module):
    """An encoder-decoder toy: ``shared`` is tied to both stacks' embeddings and to the head."""

    def __init__(self) -> None:
        super().__init__()
        self._tied_weights_keys = {
            "model.encoder.embed_tokens.weight": "model.shared.weight",
            "model.decoder.embed_tokens.weight": "model.shared.weight",
            "lm_head.weight": "model.shared.weight",
        }
        self.model = nn.Module()
        self.model.shared = nn.Embedding(16, 8)
        for stack in ("encoder", "decoder"):
            setattr(self.model, stack, nn.Module())
            getattr(self.model, stack).embed_tokens = nn.Embedding(16, 8)
            getattr(self.model, stack).embed_tokens.weight = self.model.shared.weight
            getattr(self.model, stack).linear = nn.Linear(8, 8)
        self.lm_head = nn.Linear(8, 16, bias=False)
        self.lm_head.weight = self.model.shared.weight

    def get_input_embeddings(self) -> nn.Module:
        return self.model.shared

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        encoded = self.model.encoder.linear(self.model.encoder.embed_tokens(ids))
        return self.lm_head(encoded + self.model.decoder.linear(self.model.decoder.embed_tokens(ids)))


def _lora_pairs(model: Any) -> dict[str, tuple[int, ...]]:
    """Each adapted module's name -> the storage pointers of its factors (equal pointers: shared factors)."""
    found = {}
    for name, module in model.base_model.model.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            found[name] = tuple(
                sorted((module.lora_A["default"].weight.data_ptr(), module.lora_B["default"].weight.data_ptr()))
            )
        elif hasattr(module, "lora_embedding_A") and "default" in module.lora_embedding_A:
            found[name] = tuple(
                sorted((module.lora_embedding_A["default"].data_ptr(), module.lora_embedding_B["default"].data_ptr()))
            )
    return found


@pytest.mark.parametrize(
    ("build", "targets"),
    [
        (lambda: TiedLM(True), r".*embed_tokens$"),
        (lambda: TiedLM(True), r".*lm_head$"),
        (lambda: TiedLM(True), ["linear", "lm_head"]),
        (lambda: TiedLM(True, config_says=False), ["linear", "embed_tokens"]),
        (lambda: TiedLM(True, config_says=True), ["linear", "lm_head"]),
        (TiedSeq2Seq, ["lm_head"]),
        (TiedSeq2Seq, ["embed_tokens"]),
        (TiedSeq2Seq, ["linear"]),
        (TiedSeq2Seq, r".*lm_head"),
    ],
)
def test_ensure_weight_tying_adapts_and_ties_what_the_reference_does(build: Any, targets: Any) -> None:
    adapted = []
    for lib in (peftkit, peft):
        torch.manual_seed(0)
        model = lib.get_peft_model(build(), lib.LoraConfig(target_modules=targets, ensure_weight_tying=True))
        pairs = _lora_pairs(model)
        tied = {(a, b) for a in pairs for b in pairs if a < b and set(pairs[a]) == set(pairs[b])}
        adapted.append((sorted(pairs), tied))
    assert adapted[0] == adapted[1]


@pytest.mark.parametrize("source", ["peft", "peftkit"])
@pytest.mark.parametrize(
    ("build", "targets"), [(TiedSeq2Seq, ["lm_head", "linear"]), (lambda: TiedLMWithHead(True), r".*lm_head")]
)
@torch.no_grad()
def test_tied_adapters_move_between_libraries(source: str, build: Any, targets: Any, tmp_path: Any) -> None:
    libs = {"peft": peft, "peftkit": peftkit}
    target = "peftkit" if source == "peft" else "peft"
    torch.manual_seed(0)
    config = libs[source].LoraConfig(target_modules=targets, ensure_weight_tying=True, init_lora_weights=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saved = libs[source].get_peft_model(build(), config).eval()
        saved.save_pretrained(tmp_path)
        torch.manual_seed(0)
        loaded = libs[target].PeftModel.from_pretrained(build(), tmp_path).eval()
    ids = torch.tensor([[1, 5, 9, 2]])
    torch.manual_seed(0)
    assert not torch.allclose(saved(ids), build()(ids), atol=1e-4)  # the adapter changes the output
    torch.testing.assert_close(loaded(ids), saved(ids))


def test_ensure_weight_tying_with_tied_modules_to_save_is_refused() -> None:
    """The reference shares the two ``modules_to_save`` copies; peftkit does not implement that and says so,
    instead of training two copies that drift apart."""
    config = peftkit.LoraConfig(target_modules=["linear"], modules_to_save=["lm_head"], ensure_weight_tying=True)
    with pytest.raises(peftkit.errors.UnsupportedError, match="modules_to_save"):
        peftkit.get_peft_model(TiedLM(True), config)


CONVERTING_INITS = ["pissa", "pissa_niter_3", "olora", True]


@pytest.mark.parametrize(
    ("init", "rslora", "rank_pattern", "alpha_pattern"),
    list(itertools.product(CONVERTING_INITS, [False, True], [{}, {"linear": 8}], [{}, {"linear": 8}])),
)
def test_pissa_olora_with_rslora_and_patterns_warn(
    init: Any, rslora: bool, rank_pattern: Any, alpha_pattern: Any
) -> None:
    options = {
        "init_lora_weights": init,
        "target_modules": ["linear"],
        "use_rslora": rslora,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
    }
    ours = _user_warnings(lambda: peftkit.LoraConfig(**options))
    theirs = _user_warnings(lambda: peft.LoraConfig(**options))
    assert len(ours) == len(theirs)
    expected = init != True and rslora and bool(rank_pattern or alpha_pattern)  # noqa: E712  # True is an init value here
    assert bool(ours) == expected
