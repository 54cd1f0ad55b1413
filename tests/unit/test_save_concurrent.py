"""Two writers of one directory at once (two ranks that both believe they are the main one, each writing a Trainer
checkpoint: the adapter files, then the manifest) take turns, so the directory ends with every file.

The interleaving that lost ``adapter_config.json`` before writers took turns: writer A has committed its journal
and is about to remove the old config (step 3); writer B, starting its next write, finishes A's journal itself
(config renamed into place, journal deleted); then A removes the config B had just put there. The test stops A at
that point and lets B run; B must wait for A instead of finishing A's save under it."""

from __future__ import annotations

import threading
from pathlib import Path

from peftkit.io import commit

CONFIG, WEIGHTS, MANIFEST = "adapter_config.json", "adapter_model.safetensors", "adapter_checkpoint.json"


def writer(text: str):
    def write(path: str) -> None:
        Path(path).write_text(text)

    return write


def test_a_second_writer_waits_for_the_first_to_finish(tmp_path, monkeypatch) -> None:
    commit.commit_files(tmp_path, {CONFIG: writer("old config"), WEIGHTS: writer("old weights")})
    a_paused, b_done = threading.Event(), threading.Event()
    real_remove = commit._remove
    a = threading.current_thread()

    def remove(path: str) -> None:
        if threading.current_thread() is a and path.endswith(CONFIG):
            a_paused.set()
            b_done.wait(timeout=1.0)  # B, waiting for A, cannot finish: A goes on after the timeout
        real_remove(path)

    monkeypatch.setattr(commit, "_remove", remove)
    b = threading.Thread(
        target=lambda: (a_paused.wait(), commit.commit_file(tmp_path, MANIFEST, writer("manifest")), b_done.set())
    )
    b.start()
    commit.commit_files(tmp_path, {CONFIG: writer("new config"), WEIGHTS: writer("new weights")})
    b.join()
    assert b_done.is_set()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CONFIG, WEIGHTS, MANIFEST])
    assert (tmp_path / CONFIG).read_text() == "new config" and (tmp_path / WEIGHTS).read_text() == "new weights"
