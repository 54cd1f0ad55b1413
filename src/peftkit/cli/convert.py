"""``peftkit convert``: bring an older adapter directory to the current format.

* ``adapter_model.bin`` (pickle, read with ``torch.load(weights_only=True)``) becomes
  ``adapter_model.safetensors``; the tensors are read back and compared before the ``.bin`` is removed.
* ``adapter_config.json`` is rewritten with the current config class: keys this format does not know are
  dropped, missing fields take their defaults, ``inference_mode`` is true and ``peft_version`` current.

Every adapter in the directory is converted (``default`` in the folder itself, others in sub-folders).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import warnings

import torch

from peftkit.cli.errors import CliError
from peftkit.config import CONFIG_NAME, PEFT_FORMAT_VERSION, PeftConfig
from peftkit.io.files import BIN_NAME, SAFETENSORS_NAME, load_tensors, save_tensors
from peftkit.io.save import config_for_saving
from peftkit.registry import config_class_for


def upgrade_config(source: str, target: str) -> str:
    """Rewrite ``source/adapter_config.json`` into ``target``; returns a one-line account of the changes."""
    raw = PeftConfig.from_json_file(os.path.join(source, CONFIG_NAME))
    if "peft_type" not in raw:
        raise CliError(f"{source}/{CONFIG_NAME} has no peft_type; it is not a PEFT adapter config.")
    cls = config_class_for(raw["peft_type"])
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    dropped = sorted(set(raw) - known)
    filled = sorted(known - set(raw))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the dropped keys are reported below
        config = cls.from_dict(raw)
    config = config_for_saving(config, None)
    config.peft_version = PEFT_FORMAT_VERSION
    config.save_pretrained(target)
    changes = []
    if dropped:
        changes.append(f"dropped unknown keys {', '.join(dropped)}")
    if filled:
        changes.append(f"filled {len(filled)} defaults ({', '.join(filled)})")
    return f"{CONFIG_NAME}: " + ("; ".join(changes) if changes else "already current (rewritten in canonical form)")


def convert_weights(source: str, target: str, keep_bin: bool) -> str:
    """Write ``target/adapter_model.safetensors`` from the source's ``.bin`` (or copy it); account line."""
    bin_path, safe_path = os.path.join(source, BIN_NAME), os.path.join(source, SAFETENSORS_NAME)
    out_path = os.path.join(target, SAFETENSORS_NAME)
    if os.path.isfile(safe_path):
        if os.path.abspath(safe_path) != os.path.abspath(out_path):
            shutil.copy2(safe_path, out_path)
        return f"{SAFETENSORS_NAME}: already safetensors"
    if not os.path.isfile(bin_path):
        raise CliError(f"{source}: no {SAFETENSORS_NAME} or {BIN_NAME}; is this an adapter directory?")
    tensors = load_tensors(bin_path)
    save_tensors(tensors, out_path)
    back = load_tensors(out_path)
    if back.keys() != tensors.keys() or not all(torch.equal(back[k], tensors[k]) for k in tensors):
        os.remove(out_path)
        raise CliError(f"{out_path}: the written tensors differ from {bin_path}; nothing was converted.")
    note = f"{BIN_NAME} -> {SAFETENSORS_NAME} ({len(tensors)} tensors, read back identical)"
    same_folder = os.path.abspath(source) == os.path.abspath(target)
    if same_folder and not keep_bin:
        os.remove(bin_path)
        note += f"; removed {BIN_NAME}"
    elif not same_folder and keep_bin:
        shutil.copy2(bin_path, os.path.join(target, BIN_NAME))
    return note


def convert(adapter_dir: str, output_dir: str | None = None, keep_bin: bool = False) -> int:
    """Convert an older adapter: .bin weights to safetensors, adapter_config.json to the current format.

    Unknown config keys (from another PEFT version) are dropped and missing fields filled with their
    defaults; each change is listed. Sub-folders holding further adapters are converted too. Without
    --output-dir the directory is converted in place.

    Args:
        adapter_dir: Adapter directory to convert.
        output_dir: Write the converted adapter here instead of in place (other files are copied).
        keep_bin: Keep adapter_model.bin next to the new safetensors file.
    """
    if not os.path.isfile(os.path.join(adapter_dir, CONFIG_NAME)):
        raise CliError(f"{adapter_dir}: no {CONFIG_NAME} here; pass an adapter directory.")
    target_root = output_dir or adapter_dir
    names = [
        "",
        *sorted(d for d in os.listdir(adapter_dir) if os.path.isfile(os.path.join(adapter_dir, d, CONFIG_NAME))),
    ]
    for name in names:
        source, target = os.path.join(adapter_dir, name), os.path.join(target_root, name)
        os.makedirs(target, exist_ok=True)
        if os.path.abspath(source) != os.path.abspath(target):
            for extra in os.listdir(source):
                if os.path.isfile(os.path.join(source, extra)) and extra not in (
                    CONFIG_NAME,
                    BIN_NAME,
                    SAFETENSORS_NAME,
                ):
                    shutil.copy2(os.path.join(source, extra), os.path.join(target, extra))
        label = name or os.path.basename(os.path.normpath(adapter_dir))
        print(f"{label}: {convert_weights(source, target, keep_bin)}")
        print(f"{label}: {upgrade_config(source, target)}")
    print(f"converted adapter(s) written to {target_root}")
    return 0
