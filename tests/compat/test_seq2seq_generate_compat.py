"""``PeftModelForSeq2SeqLM.generate`` takes keyword inputs only, as the reference's: a positional input is a
``TypeError`` on both, for a layer method and a prompt method; keyword inputs give the reference's tokens."""

from __future__ import annotations

import peft
import pytest
import torch
from tests._tiny import t5_config
from transformers import T5ForConditionalGeneration

import peftkit

CONFIGS = {
    "lora": {"task_type": "SEQ_2_SEQ_LM", "r": 4, "target_modules": ["q", "v"], "init_lora_weights": False},
    "prompt_tuning": {"task_type": "SEQ_2_SEQ_LM", "num_virtual_tokens": 3},
}


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_positional_input_refused_keywords_match_reference(kind: str) -> None:
    cls = "LoraConfig" if kind == "lora" else "PromptTuningConfig"
    models = []
    for library in (peftkit, peft):
        torch.manual_seed(0)
        base = T5ForConditionalGeneration(t5_config())
        torch.manual_seed(1)
        models.append(library.get_peft_model(base, getattr(library, cls)(**CONFIGS[kind])).eval())
    ours, theirs = models
    assert type(ours).__name__ == type(theirs).__name__ == "PeftModelForSeq2SeqLM"
    ids = torch.randint(2, 50, (2, 5), generator=torch.Generator().manual_seed(2))
    for model in (ours, theirs):
        with pytest.raises(TypeError):
            model.generate(ids)
    if kind == "lora":
        theirs.load_state_dict(ours.state_dict())
    else:
        theirs.prompt_encoder.default.embedding.weight.data.copy_(
            ours.state_dict()["prompt_encoder.default.embedding.weight"]
        )
    settings = {"max_new_tokens": 4, "do_sample": False}
    assert torch.equal(ours.generate(input_ids=ids, **settings), theirs.generate(input_ids=ids, **settings))
