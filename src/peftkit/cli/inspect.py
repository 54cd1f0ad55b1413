"""``peftkit inspect``: what an adapter directory holds, read from its files alone (no base model needed).

Per module it reports each tensor's Frobenius norm ``||T||_F = sqrt(sum T_ij^2)`` and what the method's spec
says about it (``describe_module``): the rank of its update and, for LoRA, the norm of the weight change
``||delta W||_F = s * ||B A||_F`` (see :mod:`peftkit.methods.lora.describe`).
"""

from __future__ import annotations

import json as jsonlib
import os
from typing import Any

import torch

from peftkit.cli.errors import CliError
from peftkit.config import CONFIG_NAME, PeftConfig
from peftkit.errors import ConfigError
from peftkit.io.keys import strip_prefix
from peftkit.io.load import read_weights
from peftkit.registry import METHODS, method_for


def adapter_segments() -> frozenset[str]:
    """Key segments where an adapter's tensor names begin (everything before is the module path): every
    registered layer's per-adapter containers and settings, ``base_layer`` and ``prompt_embeddings``."""
    names = {"base_layer", "prompt_embeddings"}
    for spec in METHODS.values():
        for layer in spec.layer_table.values():
            names.update(layer.adapter_layer_names, layer.other_param_names)
    return frozenset(names)


def split_key(key: str, segments: frozenset[str] | None = None) -> tuple[str, str]:
    """``(module path, tensor name)`` of an on-disk key, e.g. ``("model.layers.0.q_proj", "lora_A.weight")``."""
    parts = strip_prefix(key).split(".")
    segments = adapter_segments() if segments is None else segments
    for i, part in enumerate(parts):
        if part in segments:
            return ".".join(parts[:i]), ".".join(parts[i:])
    return ".".join(parts[:-1]), parts[-1]


def describe_module(module: str, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> tuple[Any, Any]:
    """``(rank, |delta W|)`` of one module by its method's ``describe_module`` hook (``None`` where it has none)."""
    try:
        spec = method_for(config.get("peft_type", ""))
    except ConfigError:
        return None, None
    return spec.describe_module(module, tensors, config) if spec.describe_module is not None else (None, None)


def describe_adapter(adapter_dir: str) -> dict[str, Any]:
    """Everything ``inspect`` reports, as a JSON-ready dict."""
    config_path = os.path.join(adapter_dir, CONFIG_NAME)
    if not os.path.isfile(config_path):
        raise CliError(f"{adapter_dir}: no {CONFIG_NAME} here; pass an adapter directory.")
    config = PeftConfig.from_json_file(config_path)
    weights = read_weights(adapter_dir)
    modules: dict[str, dict[str, torch.Tensor]] = {}
    segments = adapter_segments()
    for key, tensor in weights.items():
        module, name = split_key(key, segments)
        modules.setdefault(module, {})[name] = tensor
    rows = []
    for module, tensors in sorted(modules.items()):
        rank, delta_norm = describe_module(module, tensors, config)
        rows.append({
            "module": module or "(prompt)",
            "rank": rank,
            "params": sum(t.numel() for t in tensors.values()),
            "norms": {name: round(float(t.float().norm()), 6) for name, t in sorted(tensors.items())},
            "delta_norm": delta_norm,
        })  # fmt: skip
    files = {f: os.path.getsize(os.path.join(adapter_dir, f)) for f in sorted(os.listdir(adapter_dir))
             if os.path.isfile(os.path.join(adapter_dir, f))}  # fmt: skip
    subadapters = sorted(
        d for d in os.listdir(adapter_dir) if os.path.isfile(os.path.join(adapter_dir, d, CONFIG_NAME))
    )
    ranks = sorted({r["rank"] for r in rows if r["rank"] is not None})
    return {
        "adapter": adapter_dir,
        "method": config.get("peft_type"),
        "task_type": config.get("task_type"),
        "base_model": config.get("base_model_name_or_path"),
        "ranks": ranks,
        "alpha": config.get("lora_alpha", config.get("alpha")),  # LoHa / LoKr call it alpha
        "targets": config.get("target_modules"),
        "target_parameters": config.get("target_parameters") or None,
        "modules_to_save": config.get("modules_to_save"),
        "num_virtual_tokens": config.get("num_virtual_tokens"),
        "parameters": sum(t.numel() for t in weights.values()),
        "dtypes": sorted({str(t.dtype).removeprefix("torch.") for t in weights.values()}),
        "tensors": len(weights),
        "files": files,
        "other_adapters": subadapters,
        "modules": rows,
    }


def _kb(size: int) -> str:
    return f"{size / 1024:.1f} kB"


def _targets(targets: Any) -> str:
    """``q_proj, v_proj (8 modules)`` for a list of full module names; a regex or ``None`` as written."""
    if not isinstance(targets, list) or not targets:
        return str(targets) if targets else "-"
    names = sorted({t.rsplit(".", 1)[-1] for t in targets})
    return ", ".join(names) + (f" ({len(targets)} modules)" if len(targets) > len(names) else "")


def print_report(info: dict[str, Any]) -> None:
    """Human-readable form of :func:`describe_adapter`."""
    targets = info["targets"]
    lines = [
        ("adapter", info["adapter"]),
        ("method", f"{info['method']} (task {info['task_type']})"),
        ("base model", str(info["base_model"])),
        ("rank(s)", ", ".join(map(str, info["ranks"])) or "-"),
        ("alpha", str(info["alpha"]) if info["alpha"] is not None else "-"),
        ("targets", _targets(targets)),
        ("parameters of", ", ".join(info["target_parameters"])) if info["target_parameters"] else None,
        ("virtual tokens", str(info["num_virtual_tokens"])) if info["num_virtual_tokens"] else None,
        ("parameters", f"{info['parameters']:,} in {info['tensors']} tensors ({', '.join(info['dtypes'])})"),
        ("files", ", ".join(f"{name} {_kb(size)}" for name, size in info["files"].items())),
        ("also here", ", ".join(info["other_adapters"])) if info["other_adapters"] else None,
    ]
    for line in lines:
        if line is not None:
            print(f"{line[0] + ':':16s}{line[1]}")
    width = max(len(r["module"]) for r in info["modules"])
    print(f"\nper-layer norms (Frobenius):\n  {'module':{width}s}  {'rank':>4s}  {'params':>8s}  "
          f"{'|delta W|':>9s}  tensors")  # fmt: skip
    for row in info["modules"]:
        delta = "-" if row["delta_norm"] is None else f"{row['delta_norm']:.4g}"
        norms = "  ".join(f"{name} {value:.4g}" for name, value in row["norms"].items())
        rank = "-" if row["rank"] is None else str(row["rank"])
        print(f"  {row['module']:{width}s}  {rank:>4s}  {row['params']:>8,}  {delta:>9s}  {norms}")


def inspect(adapter_dir: str, json: bool = False) -> int:
    """Show what an adapter holds: method, rank(s), targets, parameter count, file sizes, per-layer norms.

    Reads only the adapter's own files (adapter_config.json and adapter_model.safetensors or .bin); the
    base model is not loaded. For LoRA, |delta W| is the norm of the weight change s * B A of each layer.

    Args:
        adapter_dir: Adapter directory (adapter_config.json + adapter_model.safetensors or .bin).
        json: Print the report as JSON instead of text.
    """
    info = describe_adapter(adapter_dir)
    if json:
        print(jsonlib.dumps(info, indent=2))
    else:
        print_report(info)
    return 0
