"""A save killed at any point leaves a directory that loads the previous adapter or the new one, never a mix.

The old adapter has ``lora_alpha=8``, the new one other weights and ``lora_alpha=16`` (the issue's case: new
weights beside the old config loaded silently). A forked child runs the save and is killed (``os._exit``, no
clean-up) just before its k-th file-system step (a write flushed, a rename, a removal), or in the middle of
writing the weights file; k runs over every step of a save. After each kill:

* peftkit loads the directory as exactly the old or the new adapter (outputs equal), old before the commit
  point and new after it;
* the reference ``peft`` (which knows nothing of peftkit's commit journal) loads the old or the new adapter
  too, or fails loudly (while the config file is being replaced), never a mix;
* the next save completes and leaves exactly PEFT's files, model card included (leftovers of killed saves
  removed).
"""

from __future__ import annotations

import os

import peft as reference
import pytest
import safetensors.torch
import torch

import peftkit

STEPS = ("fsync", "replace", "remove")
KILLED, COMPLETED = 17, 0


def adapter(toy, seed: int, alpha: int) -> peftkit.PeftModel:
    torch.manual_seed(seed)
    config = peftkit.LoraConfig(r=2, lora_alpha=alpha, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return peftkit.get_peft_model(toy(), config)


def killed_save(model: peftkit.PeftModel, directory, kill_at: int, safe: bool, mid_write: bool) -> int:
    """Fork; the child saves and dies before its ``kill_at``-th step. Returns the child's exit code."""
    pid = os.fork()
    if pid == 0:  # the child: never returns to pytest
        code = COMPLETED
        try:
            count = [0]

            def step(real):
                def run(*args, **kwargs):
                    if count[0] == kill_at:
                        os._exit(KILLED)
                    count[0] += 1
                    return real(*args, **kwargs)

                return run

            for name in STEPS:
                setattr(os, name, step(getattr(os, name)))
            if mid_write:
                real_save = safetensors.torch.save_file

                def half(tensors, path, metadata=None):
                    real_save(tensors, path, metadata=metadata)
                    with open(path, "r+b") as fh:
                        fh.truncate(os.path.getsize(path) // 2)
                    os._exit(KILLED)

                safetensors.torch.save_file = half
            model.save_pretrained(directory, safe_serialization=safe)
        except BaseException:
            code = 3
        os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def output(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def which(loaded_out: torch.Tensor, old: torch.Tensor, new: torch.Tensor) -> str:
    if torch.allclose(loaded_out, old, atol=1e-6):
        return "old"
    if torch.allclose(loaded_out, new, atol=1e-6):
        return "new"
    return "mix"


def reference_load(toy, directory, x, old, new) -> str:
    try:
        model = reference.PeftModel.from_pretrained(toy(), directory)
    except (ValueError, OSError):  # no adapter_config.json while it is being replaced: a loud failure
        return "error"
    return which(output(model, x), old, new)


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_every_kill_point_loads_old_or_new(toy, tmp_path, safe: bool) -> None:
    x = torch.randint(0, 12, (2, 5))
    old_model, new_model = adapter(toy, seed=1, alpha=8), adapter(toy, seed=2, alpha=16)
    old, new = output(old_model, x), output(new_model, x)
    seen = []
    for kill_at in range(100):
        directory = tmp_path / str(kill_at)
        old_model.save_pretrained(directory, safe_serialization=True)  # the previous save: safetensors
        code = killed_save(new_model, directory, kill_at, safe, mid_write=False)
        assert code in (KILLED, COMPLETED)
        loaded = peftkit.PeftModel.from_pretrained(toy(), directory)
        state = which(output(loaded, x), old, new)
        assert state != "mix", f"killed before step {kill_at}: a mix of the old and new adapter"
        assert loaded.peft_config["default"].lora_alpha == (8 if state == "old" else 16)
        assert reference_load(toy, directory, x, old, new) != "mix"
        seen.append(state)
        new_model.save_pretrained(directory, safe_serialization=safe)  # a later save cleans up
        weights = "adapter_model.safetensors" if safe else "adapter_model.bin"
        assert sorted(os.listdir(directory)) == sorted(["README.md", "adapter_config.json", weights])
        assert reference_load(toy, directory, x, old, new) == "new"
        if code == COMPLETED:
            break
    assert seen[0] == "old" and seen[-1] == "new" and seen == sorted(seen, key=["old", "new"].index), seen


def test_kill_while_writing_weights_keeps_previous_adapter(toy, tmp_path) -> None:
    x = torch.randint(0, 12, (2, 5))
    old_model, new_model = adapter(toy, seed=1, alpha=8), adapter(toy, seed=2, alpha=16)
    old_model.save_pretrained(tmp_path)
    assert killed_save(new_model, tmp_path, kill_at=10**6, safe=True, mid_write=True) == KILLED
    assert any(name.startswith(".peftkit-tmp-") for name in os.listdir(tmp_path)), "the half-written file is staged"
    loaded = peftkit.PeftModel.from_pretrained(toy(), tmp_path)
    torch.testing.assert_close(output(loaded, x), output(old_model, x))
    new_model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]


def test_leftovers_of_earlier_versions_are_cleaned(toy, tmp_path) -> None:
    model = adapter(toy, seed=1, alpha=8)
    model.save_pretrained(tmp_path)
    for name in (".tmp-abc123adapter_model.safetensors", ".tmp-xyzadapter_config.json", "notes.txt"):
        (tmp_path / name).write_text("leftover")
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "notes.txt",
    ]
