"""Loading bad adapter directories: each failure is a clear error, and the model is exactly as it was.

(Keys that fit nothing are ignored with a warning, as peft ignores them: ``compat/test_extra_keys_load_compat.py``.)
Every corruption is tried both ways: ``load_adapter`` into a PeftModel that already has an adapter, and
``PeftModel.from_pretrained`` onto a fresh base model.
"""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

import peftkit as peft
from peftkit.errors import CheckpointError, ConfigError

WEIGHTS = "adapter_model.safetensors"
KEY = "base_model.model.layers.0.q_proj.lora_A.weight"


class Payload:
    """Pickles as a call to ``print``: a file holding it must never be unpickled with code execution."""

    def __reduce__(self):
        return (print, ("payload executed",))


def edit_tensors(directory, edit) -> None:
    tensors = load_file(directory / WEIGHTS)
    edit(tensors)
    save_file(tensors, directory / WEIGHTS, metadata={"format": "pt"})


def edit_config(directory, edit) -> None:
    config = json.loads((directory / "adapter_config.json").read_text())
    edit(config)
    (directory / "adapter_config.json").write_text(json.dumps(config))


def wrong_shape(d):
    edit_tensors(d, lambda t: t.__setitem__(KEY, torch.zeros(3, 8)))


def missing_key(d):
    edit_tensors(d, lambda t: t.pop(KEY))


def corrupt(d):
    (d / WEIGHTS).write_bytes(b"\x00\x01 definitely not safetensors " * 10)


def truncated(d):
    data = (d / WEIGHTS).read_bytes()
    (d / WEIGHTS).write_bytes(data[: len(data) // 2])


def no_config(d):
    (d / "adapter_config.json").unlink()


def no_weights(d):
    (d / WEIGHTS).unlink()


def invalid_json(d):
    (d / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 2,')


def json_list(d):
    (d / "adapter_config.json").write_text("[1, 2]")


def unknown_method(d):
    edit_config(d, lambda c: c.__setitem__("peft_type", "NOT_A_METHOD"))


def rank_disagrees(d):
    edit_config(d, lambda c: c.__setitem__("r", 4))


def pickled_object(d):
    (d / WEIGHTS).unlink()
    torch.save({KEY: Payload()}, d / "adapter_model.bin")


def bin_not_a_dict(d):
    (d / WEIGHTS).unlink()
    torch.save([torch.zeros(2)], d / "adapter_model.bin")


def integer_tensor(d):
    edit_tensors(d, lambda t: t.__setitem__(KEY, torch.ones(2, 8, dtype=torch.int64)))


def nested_lists(d):
    value: list = []
    for _ in range(940):
        value = [value]
    edit_config(d, lambda c: c.__setitem__("target_modules", value))


def huge_rank(d):
    edit_config(d, lambda c: c.__setitem__("r", 2**62))


def bad_target_regex(d):
    edit_config(d, lambda c: c.__setitem__("target_modules", r".*(q_proj"))


def bad_exclude_regex(d):
    edit_config(d, lambda c: c.__setitem__("exclude_modules", "[v_proj"))


def bad_rank_pattern_key(d):
    edit_config(d, lambda c: c.__setitem__("rank_pattern", {"*q": 2}))


def bad_alpha_pattern_key(d):
    edit_config(d, lambda c: c.__setitem__("alpha_pattern", {"q_proj)": 2}))


BAD = {
    wrong_shape: (CheckpointError, rf"shape mismatch: {KEY[17:]}: checkpoint \(3, 8\) vs model \(2, 8\)"),
    missing_key: (CheckpointError, rf"missing keys: {KEY[17:]}"),
    corrupt: (CheckpointError, "Cannot read adapter weights .* corrupt, truncated or not a tensor file"),
    truncated: (CheckpointError, "Cannot read adapter weights"),
    no_config: (ConfigError, "Can't find 'adapter_config.json'"),
    no_weights: (CheckpointError, "No adapter_model.safetensors or adapter_model.bin found"),
    invalid_json: (ConfigError, "is not valid JSON"),
    json_list: (ConfigError, "must hold a JSON object"),
    unknown_method: (ConfigError, "peft_type='NOT_A_METHOD'"),
    rank_disagrees: (CheckpointError, "shape mismatch"),
    pickled_object: (CheckpointError, "Cannot read adapter weights from .*adapter_model.bin"),
    bin_not_a_dict: (CheckpointError, "does not hold a flat dict of tensors"),
    integer_tensor: (CheckpointError, rf"non-floating-point tensors .*{KEY[17:]}: torch.int64"),
    nested_lists: (ConfigError, "LoraConfig.target_modules is nested more than"),
    huge_rank: (ConfigError, "LoraConfig.r must be an integer from 1 to"),
    bad_target_regex: (ConfigError, "LoraConfig.target_modules holds an invalid regular expression"),
    bad_exclude_regex: (ConfigError, "LoraConfig.exclude_modules holds an invalid regular expression"),
    bad_rank_pattern_key: (ConfigError, r"LoraConfig.rank_pattern key '\*q' holds an invalid regular expression"),
    bad_alpha_pattern_key: (ConfigError, r"LoraConfig.alpha_pattern key 'q_proj\)' holds an invalid"),
}


@pytest.fixture
def saved(toy, tmp_path):
    directory = tmp_path / "adapter"
    peft.get_peft_model(toy(), peft.LoraConfig(r=2, init_lora_weights=False)).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("damage", list(BAD), ids=[f.__name__ for f in BAD])
@pytest.mark.parametrize("how", ["load_adapter", "from_pretrained"])
def test_bad_adapter_leaves_model_untouched(toy, saved, unchanged, capsys, damage, how: str) -> None:
    damage(saved)
    error, message = BAD[damage]
    if how == "load_adapter":
        model = peft.get_peft_model(toy(), peft.LoraConfig(r=3, init_lora_weights=False))
        check = unchanged(model)
        with pytest.raises(error, match=message):
            model.load_adapter(saved, adapter_name="second")
    else:
        model = toy()
        check = unchanged(model)
        with pytest.raises(error, match=message):
            peft.PeftModel.from_pretrained(model, saved)
    check()
    assert "payload executed" not in capsys.readouterr().out


def test_bin_file_loads(toy, tmp_path) -> None:
    model = peft.get_peft_model(toy(), peft.LoraConfig(r=2, init_lora_weights=False)).eval()
    model.save_pretrained(tmp_path, safe_serialization=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.bin"]
    loaded = peft.PeftModel.from_pretrained(toy(), tmp_path)
    ids = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)


def test_unknown_config_keys_are_dropped_with_a_warning(toy, saved) -> None:
    edit_config(saved, lambda c: c.update(future_option=True, another_new_field=[1]))
    with pytest.warns(UserWarning, match="another_new_field, future_option"):
        loaded = peft.PeftModel.from_pretrained(toy(), saved)
    config = loaded.peft_config["default"]
    assert not hasattr(config, "future_option")
    assert config.r == 2


def test_pickle_payload_really_would_run() -> None:
    # guards the test above: unpickling Payload without weights_only does execute code
    assert pickle.loads(pickle.dumps(Payload())) is None
