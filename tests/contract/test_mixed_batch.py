"""Mixed batches: ``model(x, adapter_names=[...])`` runs each sample through its own adapter (or the base
for ``"__base__"``), exactly as a model holding only that adapter would."""

from __future__ import annotations

import pytest
import torch
from tests.contract._cases import output, single_adapter_output

import peftkit as peft

ROUTE = ["b", "__base__", "default", "c", "b", "default"]


def three_adapters(case):
    model = case.peft()
    case.add(model, "b", seed=2)
    case.add(model, "c", seed=3, r=3)
    return model.eval()


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_each_sample_equals_its_single_adapter_model(case, grad: bool) -> None:
    model = three_adapters(case)
    x = case.inputs(len(ROUTE))
    if grad:  # gradient-tracking calls take the generic per-adapter path
        out = model(x, adapter_names=ROUTE)
        mixed = (out.logits if hasattr(out, "logits") else out).detach()
    else:
        mixed = output(model, x, adapter_names=ROUTE)
    expected = {"__base__": output(case.base(), x)}
    for name in ("default", "b", "c"):
        config, state = model.peft_config[name], model.get_adapter_state_dict(name)
        expected[name] = single_adapter_output(case, config, state, x)
    for i, name in enumerate(ROUTE):
        torch.testing.assert_close(mixed[i], expected[name][i], rtol=1e-5, atol=1e-5, msg=f"sample {i} ({name})")
    # the routing ends with the call: a plain forward uses the active adapter again
    torch.testing.assert_close(output(model, x), expected["default"], rtol=1e-5, atol=1e-5)


def test_wrong_length_raises(case) -> None:
    model = three_adapters(case)
    with pytest.raises(ValueError, match="adapter_names has 2 entries but the batch has 4"):
        output(model, case.inputs(4), adapter_names=["b", "c"])


def test_unknown_adapter_name_raises(case) -> None:
    model = three_adapters(case)
    with pytest.raises(peft.AdapterNameError, match="nope"):
        output(model, case.inputs(2), adapter_names=["b", "nope"])


def test_train_mode_raises(case) -> None:
    model = three_adapters(case).train()
    with pytest.raises(ValueError, match="eval"):
        model(case.inputs(2), adapter_names=["b", "c"])


def test_generate_with_adapter_names_equals_per_sample_generation(llama_case) -> None:
    model = three_adapters(llama_case)
    prompts = llama_case.inputs(4)
    route = ["c", "default", "__base__", "b"]
    kwargs = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0}
    mixed = model.generate(input_ids=prompts, adapter_names=route, **kwargs)
    continuations = set()
    for i, name in enumerate(route):
        if name == "__base__":
            with model.disable_adapter():
                single = model.generate(input_ids=prompts[i : i + 1], **kwargs)
        else:
            model.set_adapter(name)
            single = model.generate(input_ids=prompts[i : i + 1], **kwargs)
        assert torch.equal(mixed[i], single[0]), f"sample {i} ({name})"
        continuations.add(tuple(single[0, prompts.shape[1] :].tolist()))
    assert mixed.shape[1] > prompts.shape[1]
    assert len(continuations) > 1, "the adapters must lead to different generations for the test to mean something"


def test_merged_adapters_refuse_mixed_batches(case) -> None:
    model = three_adapters(case)
    model.merge_adapter()
    with pytest.raises(ValueError, match="merged; unmerge"):
        output(model, case.inputs(2), adapter_names=["b", "c"])
    model.unmerge_adapter()
    output(model, case.inputs(2), adapter_names=["b", "c"])
