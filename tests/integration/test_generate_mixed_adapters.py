"""generate() with one adapter per input row (``adapter_names``) when generate expands the batch.

Right: each row's output equals generating that row alone with its adapter (``"__base__"``: adapters off).
Covers greedy search, beams, beams with ``num_return_sequences`` and sampling with ``num_return_sequences``;
causal (Llama) and encoder-decoder (T5) models; ``PeftModelFor*`` and a transformers model with peftkit's
in-place adapter methods. Sampling draws different random numbers for a batch than for one row, so there
the oracle is the logits: every step's logits of every returned sequence equal a forward of that sequence
alone through its row's adapter.
"""

from __future__ import annotations

import pytest
import torch
from tests.integration._transformers_fixtures import VOCAB, lora, tiny_llama, tiny_t5

import peftkit

NAMES = ["b", "__base__", "a"]
MODES = {
    "greedy": {},
    "beams": {"num_beams": 2},
    "beams+return_sequences": {"num_beams": 3, "num_return_sequences": 2},
    "sampling+return_sequences": {"do_sample": True, "num_return_sequences": 2, "top_k": 0},
}


class Adapted:
    """One model style: builds the model with adapters ``a`` and ``b`` and switches to one of them."""

    def __init__(self, style: str, arch: str) -> None:
        build = tiny_llama if arch == "llama" else tiny_t5
        task = peftkit.TaskType.CAUSAL_LM if arch == "llama" else peftkit.TaskType.SEQ_2_SEQ_LM
        torch.manual_seed(0)
        if style == "PeftModel":
            self.model = peftkit.get_peft_model(build(), lora(alpha=32, task_type=task), adapter_name="a")
            self.model.add_adapter("b", lora(alpha=32, task_type=task))
        else:
            self.model = peftkit.enable_adapter_methods(build())
            self.model.add_adapter(lora(alpha=32), adapter_name="a")
            self.model.add_adapter(lora(alpha=32), adapter_name="b")
        self.style, self.encoder_decoder = style, arch == "t5"
        self.model.eval()

    def use(self, name: str) -> None:
        """Make ``name`` the only adapter in use (``"__base__"``: none)."""
        model = self.model
        disable = model.base_model.disable_adapter_layers if self.style == "PeftModel" else model.disable_adapters
        enable = model.base_model.enable_adapter_layers if self.style == "PeftModel" else model.enable_adapters
        if name == "__base__":
            disable()
        else:
            enable()
            model.set_adapter(name)


STYLES = [(s, a) for s in ("PeftModel", "in-place") for a in ("llama", "t5")]


def generate(model, ids: torch.Tensor, mode: dict, **kwargs) -> object:
    return model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=5,
        pad_token_id=0,
        return_dict_in_generate=True,
        output_logits=True,
        **mode,
        **kwargs,
    )


def teacher_forced_logits(adapted: Adapted, prompt: torch.Tensor, sequence: torch.Tensor, steps: int) -> torch.Tensor:
    """``(steps, vocab)`` logits that predict the last ``steps`` tokens of ``sequence`` (one sample)."""
    with torch.no_grad():
        if adapted.encoder_decoder:
            logits = adapted.model(input_ids=prompt[None], decoder_input_ids=sequence[None, :-1]).logits[0]
        else:
            logits = adapted.model(input_ids=sequence[None, :-1]).logits[0]
    return logits[-steps:]


@pytest.mark.parametrize("style", STYLES, ids=[f"{s}-{a}" for s, a in STYLES])
@pytest.mark.parametrize("mode", list(MODES))
def test_each_row_equals_generating_it_alone_with_its_adapter(style: tuple[str, str], mode: str) -> None:
    adapted = Adapted(*style)
    ids = torch.randint(3, VOCAB, (len(NAMES), 6), generator=torch.Generator().manual_seed(1))
    copies = MODES[mode].get("num_return_sequences", 1)
    torch.manual_seed(0)
    out = generate(adapted.model, ids, MODES[mode], adapter_names=NAMES)
    assert out.sequences.shape[0] == len(NAMES) * copies
    steps = len(out.logits)
    for row, name in enumerate(NAMES):
        adapted.use(name)
        rows = slice(row * copies, (row + 1) * copies)
        if "do_sample" not in MODES[mode]:
            alone = generate(adapted.model, ids[row : row + 1], MODES[mode])
            assert torch.equal(out.sequences[rows], alone.sequences), f"row {row} ({name})"
            continue
        for j in range(rows.start, rows.stop):
            expected = teacher_forced_logits(adapted, ids[row], out.sequences[j], steps)
            got = torch.stack([step[j] for step in out.logits])
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    adapted.use("a")


def test_adapters_change_every_row() -> None:
    """The adapters really differ from each other and from the base (else the test above proves little)."""
    adapted = Adapted("PeftModel", "llama")
    ids = torch.randint(3, VOCAB, (1, 6), generator=torch.Generator().manual_seed(1))
    outs = []
    for name in ("a", "b", "__base__"):
        adapted.use(name)
        outs.append(generate(adapted.model, ids, MODES["beams"]).sequences)
    assert not torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2]) and not torch.equal(outs[1], outs[2])


@pytest.mark.parametrize("style", STYLES[:2], ids=["PeftModel", "in-place"])
def test_a_batch_that_is_not_a_multiple_is_refused(style: tuple[str, str]) -> None:
    adapted = Adapted(*style)
    ids = torch.randint(3, VOCAB, (3, 6))
    with pytest.raises(ValueError, match="adapter_names has 2 entries but the batch has 3 samples"):
        adapted.model.generate(input_ids=ids, adapter_names=["a", "b"], max_new_tokens=2, pad_token_id=0)
    with pytest.raises(ValueError, match="adapter_names has 2 entries but the batch has 4 samples"):
        adapted.model(input_ids=torch.cat([ids, ids[:1]]), adapter_names=["a", "b"])
