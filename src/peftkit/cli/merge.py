"""``peftkit merge``: fold an adapter into its base model and save a plain transformers model."""

from __future__ import annotations

import os
from typing import Any, Literal

import torch

from peftkit.cli.errors import CliError


def merge(
    adapter_dir: str,
    *,
    output_dir: str,
    base_model: str | None = None,
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "auto",
    safe_merge: bool = False,
) -> int:
    """Merge an adapter into its base model and save the result as a plain transformers model.

    The base model is the one named in the adapter's adapter_config.json (base_model_name_or_path) unless
    --base-model is given. Layer adapters (LoRA, DoRA, IA3, AdaLoRA) merge as W' = W + delta W; prompt
    methods add virtual tokens and cannot be merged. The merged model is checked against the adapter model
    on a random input and saved with the base model's tokenizer, so AutoModel*.from_pretrained(OUTPUT_DIR)
    loads it without peftkit.

    Args:
        adapter_dir: Adapter directory (adapter_config.json + adapter_model.safetensors).
        output_dir: Where to write the merged model (created if needed).
        base_model: Base model directory or hub id (default: base_model_name_or_path from the adapter).
        dtype: Dtype to load the base model in (auto: as saved).
        safe_merge: Check merged weights for NaN/inf before writing them into the model.
    """
    import peftkit

    config = _read_config(adapter_dir)
    if config.is_prompt_learning:
        raise CliError(f"{adapter_dir} is a {config.peft_type} adapter: prompt methods add virtual tokens and "
                       "cannot be merged into the weights.")  # fmt: skip
    if base_model is not None:
        config.base_model_name_or_path = base_model
    base = config.base_model_name_or_path
    if not base:
        raise CliError(f"{adapter_dir}/adapter_config.json names no base model; pass --base-model.")
    if (os.path.isabs(base) or base.startswith(".")) and not os.path.isdir(base):
        raise CliError(f"the base model {base} (from {adapter_dir}) does not exist here; pass --base-model.")
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    model = peftkit.AutoPeftModel.from_pretrained(adapter_dir, config=config, dtype=torch_dtype)
    model.eval()
    probe = _probe_input(model)
    expected = _output(model, probe)
    merged = model.merge_and_unload(safe_merge=safe_merge)
    diff = float((_output(merged, probe) - expected).abs().max())
    merged.save_pretrained(output_dir)
    tokenizer_note = _copy_tokenizer(base, output_dir)
    n_params = sum(p.numel() for p in merged.parameters())
    print(f"merged {config.peft_type} adapter {adapter_dir} into {base}: {n_params:,} params, "
          f"outputs match the adapter model (max |diff| {diff:.2g}){tokenizer_note}")  # fmt: skip
    print(f"wrote {output_dir}: {', '.join(sorted(os.listdir(output_dir)))}")
    print(f"load it with transformers.{type(merged).__name__}.from_pretrained({output_dir!r})")
    return 0 if diff <= 1e-3 * max(1.0, float(expected.abs().max())) else 1


def _read_config(adapter_dir: str) -> Any:
    from peftkit.config import CONFIG_NAME, PeftConfig

    if not os.path.isfile(os.path.join(adapter_dir, CONFIG_NAME)):
        raise CliError(f"{adapter_dir}: no {CONFIG_NAME} here; pass an adapter directory.")
    return PeftConfig.from_pretrained(adapter_dir)


def _probe_input(model: Any) -> torch.Tensor:
    vocab = int(getattr(model.get_base_model().config, "vocab_size", 2) or 2)
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (2, 8), generator=generator).to(next(model.parameters()).device)


@torch.no_grad()
def _output(model: Any, input_ids: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=input_ids)
    tensor = getattr(out, "logits", None)
    return (tensor if tensor is not None else out[0]).float()


def _copy_tokenizer(base: str, output_dir: str) -> str:
    from transformers import AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(base).save_pretrained(output_dir)
    except (OSError, ValueError):
        return "; the base model has no tokenizer to copy"
    return ""
