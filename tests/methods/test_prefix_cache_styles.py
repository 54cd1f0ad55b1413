"""Prefix tuning on every cache style (tests/methods/_prefix_models.py), by formula, in whichever transformers is
installed (the cache keyword is ``past_key_values`` or ``cache``), and the models that cannot take a prefix.

The formula: the prompt encoder's table ``P`` (``n x 2L*H*D``) read as rows ``(2L, B, H, n, D)``; decoder layer
``i`` of a decoder-only or encoder-only model gets keys ``rows[2i]`` and values ``rows[2i+1]`` in the cache the
model itself builds (``DynamicCache(config=...)``: sliding-window layers stay sliding); an encoder-decoder's
decoder layer ``i`` gets rows ``4i mod 2L`` and ``4i+1 mod 2L`` and an empty cross-attention cache. The attention
mask gets ``n`` leading ones; layers that reuse another layer's keys and values (Gemma 3n's last
``num_kv_shared_layers``) get none. The peft-wrapped model must compute exactly the base model fed that cache.
"""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
import transformers as T
from tests.methods._prefix_models import MODELS, build_prefix_model, prefix_inputs
from tests.methods._prompt_models import cache_keyword, greedy_by_forward
from torch import nn

from peftkit import ConfigError, PrefixTuningConfig, UnsupportedError, get_peft_model
from peftkit.methods.prompt.layout import derive_layout

N = 3


def _config(name: str, **kwargs: object) -> PrefixTuningConfig:
    return PrefixTuningConfig(task_type=MODELS[name][1], num_virtual_tokens=N, **kwargs)


def _formula_cache(model: nn.Module, table: torch.Tensor, heads: int, batch: int) -> object:
    layers = model.config.get_text_config(decoder=True).num_hidden_layers
    rows = table.reshape(N, 2 * layers, heads, -1).permute(1, 2, 0, 3).unsqueeze(1).expand(-1, batch, -1, -1, -1)
    if model.config.is_encoder_decoder:
        pairs = [(rows[(4 * i) % (2 * layers)], rows[(4 * i + 1) % (2 * layers)]) for i in range(layers)]
        return T.EncoderDecoderCache(T.DynamicCache(pairs), T.DynamicCache())
    own = layers - getattr(model.config, "num_kv_shared_layers", 0)  # later layers read earlier layers' keys
    pairs = [(rows[2 * i], rows[2 * i + 1]) if i < own else (None, None) for i in range(layers)]
    return T.DynamicCache(pairs, config=model.config)


@pytest.mark.parametrize("name", list(MODELS))
def test_forward_is_the_base_model_fed_the_prefix_cache(name: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = get_peft_model(build_prefix_model(name), _config(name)).eval()
    skipped = [str(w.message) for w in caught if "get none" in str(w.message)]
    assert skipped == (["Prefix tuning reaches layers [0, 1] of Gemma3nForCausalLM; layers [2, 3] keep no keys and "
                        "values of their own (shared with another layer, or no attention) or wider ones than the "
                        "prefix, and get none."] if name == "gemma3n" else [])  # fmt: skip
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight.normal_()
    inputs = prefix_inputs(name)
    table = model.prompt_encoder["default"].embedding.weight.detach()
    heads = model.peft_config["default"].num_attention_heads
    base = build_prefix_model(name)
    key = "decoder_attention_mask" if base.config.is_encoder_decoder else "attention_mask"
    fed = dict(inputs)
    fed[key] = torch.cat([torch.ones(2, N, dtype=torch.long), inputs.get(key, torch.ones(2, 3, dtype=torch.long))], 1)
    with torch.no_grad():
        expected = base(**fed, **{cache_keyword(base.base_model): _formula_cache(base, table, heads, 2)}).logits
        got = model(**inputs).logits
        plain = base(**inputs).logits
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, plain, atol=1e-3)
    if MODELS[name][1] == "CAUSAL_LM":
        prompt = (inputs["input_ids"], inputs["attention_mask"])
        out = model.generate(input_ids=prompt[0], attention_mask=prompt[1], max_new_tokens=4, do_sample=False)
        positions = "position_ids" in inspect.signature(base.forward).parameters
        assert torch.equal(out, greedy_by_forward(model, *prompt, 4, positions=positions))


def test_models_that_cannot_take_a_prefix_say_why() -> None:
    deberta = T.DebertaV2ForSequenceClassification(
        T.DebertaV2Config(
            vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2
        )
    )
    with pytest.raises(UnsupportedError, match="takes no key/value cache argument"):
        get_peft_model(deberta, PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=N))
    lfm2 = T.Lfm2ForCausalLM(
        T.Lfm2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                     num_key_value_heads=1, layer_types=["conv", "full_attention"])
    )  # fmt: skip
    with pytest.raises(ConfigError, match="Layer 0 of Lfm2ForCausalLM keeps a LinearAttentionLayer"):
        get_peft_model(lfm2, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=N))
    with pytest.raises(
        ConfigError, match=r"sized for 4 key/value heads of width 4 .* hold \(heads, width\) \[\(2, 8\)\]"
    ):
        get_peft_model(build_prefix_model("opt"), _config("opt", num_attention_heads=4, token_dim=16))
    with pytest.raises(ConfigError, match="needs num_transformer_submodules=2"):
        get_peft_model(build_prefix_model("bart"), _config("bart", num_transformer_submodules=1))


def test_the_probe_leaves_modes_and_random_state_alone() -> None:
    """Reading the layout runs the model once in eval mode: no dropout draws, every module's mode restored."""
    model = build_prefix_model("bert").train()
    model.bert.encoder.layer[0].eval()
    modes = [m.training for m in model.modules()]
    torch.manual_seed(3)
    layout = derive_layout(model, cache_keyword(model.bert))
    drawn = torch.rand(4)
    torch.manual_seed(3)
    assert torch.equal(torch.rand(4), drawn)
    assert [m.training for m in model.modules()] == modes
    assert layout.shapes == ((2, 8), (2, 8)) and not layout.encoder_decoder
