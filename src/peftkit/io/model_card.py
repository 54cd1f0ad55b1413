"""The ``README.md`` model card that ``save_pretrained`` writes beside an adapter, as the reference peft does.

The card's YAML metadata is what the Hugging Face Hub reads; it carries the same fields and values as the
reference's card, so an adapter saved by peftkit is listed, tagged and linked to its base model alike:

* ``library_name: peft`` (the Hub's name for the adapter format, whichever library wrote it);
* ``base_model``: the base model's ``config._name_or_path``, when its config has one;
* ``tags``: the base model's own ``model_tags``, ``transformers`` when the adapted model is a transformers model
  (the reference's test: the object under ``PeftModel.base_model`` has a ``model`` attribute that is a
  ``PreTrainedModel``), ``lora`` for LoRA adapters, and ``base_model:adapter:<name_or_path>``;
* ``pipeline_tag: text-generation`` for a causal-LM model, unless the card already names a pipeline.

An existing card is updated, never replaced: its text and every metadata field the user wrote stay, and tags the
user listed are kept beside the ones above (the reference replaces the tag list). The text of a new card is
peftkit's own. The card is written through the journaled save (:mod:`peftkit.io.commit`), in the same commit as
the adapter files of the directory, so a failed save leaves the previous card.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

#: File name of the model card in a saved adapter directory.
CARD_NAME = "README.md"
_VERSIONS_HEADING = "### Framework versions"


def _peftkit_version() -> str:
    """The installed peftkit's version (from its package metadata; this module sits below the package root)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("peftkit")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _is_transformers_model(obj: Any) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency in practice
        return False
    return isinstance(obj, PreTrainedModel)


def card_metadata(peft_model: Any) -> dict[str, Any]:
    """The metadata fields the card of ``peft_model`` (a :class:`~peftkit.PeftModel`) must carry."""
    base = peft_model.get_base_model()
    wrapper = peft_model.base_model
    tags = set(getattr(base, "model_tags", None) or [])
    if _is_transformers_model(getattr(wrapper, "model", None)):
        tags.add("transformers")
    if (
        str(getattr(peft_model.active_peft_config.peft_type, "value", peft_model.active_peft_config.peft_type))
        == "LORA"
    ):
        tags.add("lora")
    name = getattr(base, "name_or_path", None)
    if name is not None:
        tags.add(f"base_model:adapter:{name}")
    metadata: dict[str, Any] = {"library_name": "peft", "tags": sorted(tags)}
    config = getattr(base, "config", None)
    as_dict: dict[str, Any] = config.to_dict() if config is not None and hasattr(config, "to_dict") else {}
    if "_name_or_path" in as_dict:
        metadata["base_model"] = as_dict["_name_or_path"]
    if any(cls.__name__ == "PeftModelForCausalLM" for cls in type(peft_model).__mro__):
        metadata["pipeline_tag"] = "text-generation"
    return metadata


def _adapter_facts(peft_model: Any) -> list[str]:
    """Bullet lines on what the active adapter is: method, task, base model, what it adapts, its size."""
    config = peft_model.active_peft_config
    method = getattr(config.peft_type, "value", config.peft_type)
    task = getattr(config.task_type, "value", config.task_type)
    base = peft_model.get_base_model()
    name = getattr(config, "base_model_name_or_path", None)
    facts = [
        f"- Method: `{method}`" + (f", task type `{task}`" if task else " (no task type: a bare model)"),
        f"- Base model: `{name}`" if name else f"- Base model: a `{type(base).__name__}` built in code (no hub name)",
    ]
    targets = getattr(config, "target_modules", None)
    if targets:
        shown = sorted(targets) if not isinstance(targets, str) else [targets]
        more = f" and {len(shown) - 8} more" if len(shown) > 8 else ""
        facts.append(f"- Adapted modules: {', '.join(f'`{t}`' for t in shown[:8])}{more}")
    if getattr(config, "r", None) is not None and getattr(config, "lora_alpha", None) is not None:
        facts.append(f"- Rank `r={config.r}`, `lora_alpha={config.lora_alpha}`")
    trainable, total = peft_model.get_nb_trainable_parameters()
    if total:
        facts.append(f"- Trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.4f}%)")
    return facts


def _new_card_text(peft_model: Any, version: str) -> str:
    method = getattr(peft_model.active_peft_config.peft_type, "value", peft_model.active_peft_config.peft_type)
    base = type(peft_model.get_base_model()).__name__
    facts = "\n".join(_adapter_facts(peft_model))
    return (
        "---\nlibrary_name: peft\n---\n"
        f"# {method} adapter for a `{base}` model\n\n"
        f"A parameter-efficient adapter ({method}) in the PEFT adapter format: the base model's weights are not "
        "in this directory, only the adapter's.\n\n"
        f"## Adapter\n\n{facts}\n\n"
        "## Files\n\n"
        "- `adapter_config.json`: the adapter's configuration (method, targets, hyper-parameters)\n"
        "- `adapter_model.safetensors`: the adapter's tensors\n\n"
        "## How to load\n\n"
        "Load the base model first, then this adapter onto it (with `peftkit` or `peft`, the format is the same):\n\n"
        "```python\nimport peftkit as peft  # or: import peft\n\n"
        "base_model = ...  # the base model named above\n"
        'model = peft.PeftModel.from_pretrained(base_model, "<this directory>")\n'
        "model = model.merge_and_unload()  # optional: fold the adapter into the weights for deployment\n```\n\n"
        "## Training and evaluation\n\nNot recorded by the library: add the data, settings and results here.\n\n"
        f"{_VERSIONS_HEADING}\n\n- peftkit {version}\n"
    )


def updated_card(existing: str | None, peft_model: Any) -> str:
    """The card text: ``existing`` (a README's content, or ``None``) with the metadata of ``peft_model`` merged in
    and peftkit's version listed once; a new card when there is none."""
    from huggingface_hub import ModelCard

    version = _peftkit_version()
    card = ModelCard(existing if existing is not None else _new_card_text(peft_model, version))
    metadata = card_metadata(peft_model)
    user_tags = card.data.get("tags") or []
    metadata["tags"] = sorted(set(metadata["tags"]) | set([user_tags] if isinstance(user_tags, str) else user_tags))
    if card.data.get("pipeline_tag"):
        metadata.pop("pipeline_tag", None)
    for key, value in metadata.items():
        card.data[key] = value
    line = f"- peftkit {version}"
    lines = card.text.splitlines()
    if line not in lines:
        if _VERSIONS_HEADING in lines:
            lines.insert(lines.index(_VERSIONS_HEADING) + 1, f"\n{line}")
        else:
            lines.append(f"\n{_VERSIONS_HEADING}\n\n{line}")
        card.text = "\n".join(lines) + "\n"
    return str(card.content)


def card_writes(peft_model: Any, directory: str | os.PathLike) -> dict[str, Callable[[str], None]]:
    """``{README.md: write}`` for :func:`~peftkit.io.commit.commit_files`: the updated card of ``directory``."""
    from peftkit.io.commit import committed_file

    path = committed_file(directory, CARD_NAME) if os.path.isdir(directory) else None
    existing = None
    if path is not None:
        with open(path, encoding="utf-8") as fh:
            existing = fh.read()
    text = updated_card(existing, peft_model)

    def write(target: str) -> None:
        with open(target, "w", encoding="utf-8") as fh:
            fh.write(text)

    return {CARD_NAME: write}
