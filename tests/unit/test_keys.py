"""Literal-string tests of the pure key mapping in ``peftkit.io.keys``."""

from __future__ import annotations

import pytest

from peftkit.io.keys import MODEL_PREFIX, add_prefix, insert_adapter_name, remove_adapter_name, rename_suffix

CONTAINERS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")


@pytest.mark.parametrize(
    ("memory", "adapter", "disk"),
    [
        (
            "base_model.model.model.layers.0.q_proj.lora_A.default.weight",
            "default",
            "base_model.model.model.layers.0.q_proj.lora_A.weight",
        ),
        ("m.q.lora_B.other.bias", "other", "m.q.lora_B.bias"),
        ("m.embed.lora_embedding_A.default", "default", "m.embed.lora_embedding_A"),
        ("m.q.lora_magnitude_vector.x.weight", "x", "m.q.lora_magnitude_vector.weight"),
        # only the trailing occurrence of the name is touched
        ("default.default.lora_A.default.weight", "default", "default.default.lora_A.weight"),
        ("m.other.lora_embedding_B.other", "other", "m.other.lora_embedding_B"),
        # a segment that merely ends like the adapter name is left alone
        ("m.q.lora_A.mydefault.weight", "default", "m.q.lora_A.mydefault.weight"),
        ("m.q.base_layer.weight", "default", "m.q.base_layer.weight"),
    ],
)
def test_remove_adapter_name(memory: str, adapter: str, disk: str) -> None:
    assert remove_adapter_name(memory, adapter) == disk


@pytest.mark.parametrize(
    ("disk", "adapter", "memory"),
    [
        (
            "base_model.model.model.layers.0.q_proj.lora_A.weight",
            "default",
            "base_model.model.model.layers.0.q_proj.lora_A.default.weight",
        ),
        ("m.q.lora_B.bias", "x", "m.q.lora_B.x.bias"),
        ("m.embed.lora_embedding_A", "y", "m.embed.lora_embedding_A.y"),
        ("m.embed.lora_embedding_B", "y", "m.embed.lora_embedding_B.y"),
        ("m.q.lora_magnitude_vector", "z", "m.q.lora_magnitude_vector.z"),
        ("lora_A.inner.lora_B.weight", "a", "lora_A.inner.lora_B.a.weight"),  # the last container wins
        ("m.q.base_layer.weight", "a", "m.q.base_layer.weight"),  # no container: unchanged
    ],
)
def test_insert_adapter_name(disk: str, adapter: str, memory: str) -> None:
    assert insert_adapter_name(disk, adapter, CONTAINERS) == memory


@pytest.mark.parametrize(
    "memory",
    [
        "m.layers.1.q_proj.lora_A.adapter_1.weight",
        "m.layers.1.q_proj.lora_B.adapter_1.weight",
        "m.layers.1.q_proj.lora_B.adapter_1.bias",
        "m.embed_tokens.lora_embedding_A.adapter_1",
    ],
)
def test_insert_inverts_remove(memory: str) -> None:
    disk = remove_adapter_name(memory, "adapter_1")
    assert "adapter_1" not in disk
    assert insert_adapter_name(disk, "adapter_1", CONTAINERS) == memory


def test_rename_suffix() -> None:
    renames = {".lora_magnitude_vector.weight": ".lora_magnitude_vector"}
    assert rename_suffix("m.q.lora_magnitude_vector.weight", renames) == "m.q.lora_magnitude_vector"
    assert rename_suffix("m.q.lora_A.weight", renames) == "m.q.lora_A.weight"
    assert rename_suffix("m.lora_magnitude_vector.weight.x", renames) == "m.lora_magnitude_vector.weight.x"
    first_wins = {".weight": ".W", "A.weight": ".AW"}
    assert rename_suffix("m.lora_A.weight", first_wins) == "m.lora_A.W"


def test_prefixes() -> None:
    assert MODEL_PREFIX == "base_model.model."
    assert add_prefix({"a.b": 1, "c": 2}) == {"base_model.model.a.b": 1, "base_model.model.c": 2}
    assert add_prefix({"a": 1}, "x.") == {"x.a": 1}
    from peftkit.io.keys import strip_prefix

    assert strip_prefix("base_model.model.model.layers.0.q") == "model.layers.0.q"
    assert strip_prefix("model.layers.0.q") == "model.layers.0.q"
    assert strip_prefix("x.base_model.model.q") == "x.base_model.model.q"  # only a leading prefix
    assert strip_prefix("base_model.model.base_model.model.q") == "base_model.model.q"  # only once
