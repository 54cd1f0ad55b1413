"""VeLoRA (Miles et al., 2024, "VeLoRA: Memory Efficient Training using Rank-1 Sub-Token Projections",
arXiv:2405.17991) as a LoRA variant: ``LoraConfig(velora_config=VeloraConfig(...))``.

The forward is LoRA's, ``y = base(x) + s B A dropout(x)``, and so are merging and ``get_delta_weight``. In
training (``module.training`` and gradients enabled) ``A``'s product runs through
:class:`~peftkit.methods.lora.variants.velora_math.VeloraFunction`, which keeps ``dropout(x)`` for the backward
pass only as ``G`` numbers per token (``G = num_groups``), its sub-tokens' projections on a unit vector
``v (D,)``, ``D = ceil(in / G)``; ``A``'s gradient is computed from the rebuilt input (see ``velora_math``), the
gradients of ``B`` and of the layer input are exact. Before that product, ``init_type="batch_average"`` sets
``v`` to the normalised mean sub-token of the batch, ``"batch_average_once"`` does so at the first training
forward only, ``"random"`` keeps the random unit vector drawn at creation.

Per layer, with PEFT's attribute names: ``lora_velora_embed`` (a :class:`~peftkit.layers.buffer_dict.BufferDict`
of ``v`` per adapter, in the base weight's dtype: saved as ``<module>.lora_velora_embed``, never trained) and the
dicts ``lora_velora_initialized``, ``lora_velora_num_groups``, ``lora_velora_init_type``, ``lora_velora_scale``.
Only ``nn.Linear`` / GPT-2 ``Conv1D`` layers (unquantized, or torchao-quantized) take VeLoRA.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftkit.errors import ConfigError, TargetingError
from peftkit.layers.buffer_dict import BufferDict
from peftkit.layers.placement import adapter_device
from peftkit.methods.lora.autograd import new_seed
from peftkit.methods.lora.variant import LoraVariant
from peftkit.methods.lora.variants.velora_config import VeloraConfig
from peftkit.methods.lora.variants.velora_math import (
    VeloraDropoutFunction,
    VeloraFunction,
    batch_projection,
    dropped_input,
    group_dim,
    normalize_projection,
)
from peftkit.quant.base import backend_for

#: The per-adapter settings PEFT keeps on the layer (deleted with the adapter).
SETTING_NAMES = ("lora_velora_initialized", "lora_velora_num_groups", "lora_velora_init_type", "lora_velora_scale")


class VeloraVariant(LoraVariant):
    """VeLoRA's training-time compression of ``lora_A``'s input for one adapter (see the module docstring).

    Its methods take the LoRA ``Linear`` layer typed ``Any``: they read the attributes VeLoRA adds to it.
    """

    name = "velora"

    def __init__(self, settings: VeloraConfig) -> None:
        self.settings = settings

    def __eq__(self, other: object) -> bool:
        """Equal settings (what a hot-swap into this adapter's slot requires)."""
        return isinstance(other, VeloraVariant) and other.settings == self.settings

    def __hash__(self) -> int:
        return hash((self.settings.num_groups, self.settings.scale, self.settings.init_type))

    def __repr__(self) -> str:
        return f"VeLoRA({self.settings})"

    def init(self, layer: Any, adapter: str, spec: Any) -> None:
        """Add ``adapter``'s projection vector (random unit vector, or zeros until the first training batch) and
        settings to ``layer``."""
        _ensure_containers(layer)
        settings = self.settings
        layer.lora_velora_num_groups[adapter] = settings.num_groups
        layer.lora_velora_init_type[adapter] = settings.init_type
        layer.lora_velora_scale[adapter] = settings.scale
        base = layer.get_base_layer()
        dim = group_dim(layer.in_features, settings.num_groups)
        kw: dict[str, Any] = {"device": adapter_device(base), "dtype": base.weight.dtype}
        if kw["device"].type == "meta":  # a load fills it (low_cpu_mem_usage)
            embed = torch.empty(dim, **kw)
        elif settings.init_type == "random":
            embed = normalize_projection(torch.randn(dim, **kw)).to(kw["dtype"])
        else:
            embed = torch.zeros(dim, **kw)
        layer.lora_velora_embed[adapter] = embed
        layer.lora_velora_initialized[adapter] = settings.init_type == "random"

    def adapt_output(self, layer: Any, result: torch.Tensor, x: torch.Tensor, adapter: str) -> torch.Tensor:
        """``result + s B A dropout(x)``; in training ``A``'s input is kept compressed for the backward pass (and
        a dropout mask is drawn again from its seed rather than kept)."""
        A, B, dropout = layer.lora_A[adapter], layer.lora_B[adapter], layer.lora_dropout[adapter]
        x = x.to(A.weight.dtype)
        if not (layer.training and torch.is_grad_enabled()):
            return result + (B(A(dropout(x))) * layer.scaling[adapter]).to(result.dtype)
        embed = layer.lora_velora_embed
        settings = (layer.lora_velora_num_groups[adapter], layer.lora_velora_scale[adapter])
        p = float(getattr(dropout, "p", 0.0))
        if p > 0:
            seed = new_seed()
            dropped = dropped_input(x, p, seed)
            update_projection(layer, adapter, dropped)
            after_A = VeloraDropoutFunction.apply(x, dropped, A.weight, A.bias, embed[adapter], *settings, p, seed)
        else:
            update_projection(layer, adapter, x)
            after_A = VeloraFunction.apply(x, A.weight, A.bias, embed[adapter], *settings)
        return result + (B(after_A) * layer.scaling[adapter]).to(result.dtype)


def _ensure_containers(layer: Any) -> None:
    """Give ``layer`` VeLoRA's per-adapter containers once, listed so that they are saved and deleted with the
    adapter (the embed with the adapter's tensors, the settings with its other per-adapter values)."""
    if "lora_velora_embed" in layer._modules:
        return
    layer.lora_velora_embed = BufferDict(persistent=True)
    for name in SETTING_NAMES:
        setattr(layer, name, {})
    layer.adapter_layer_names = (*layer.adapter_layer_names, "lora_velora_embed")
    layer.other_param_names = (*layer.other_param_names, *SETTING_NAMES)


def update_projection(layer: Any, adapter: str, x: torch.Tensor) -> None:
    """Set ``adapter``'s projection vector from the batch ``x`` as its ``init_type`` asks (a new tensor, so that
    graphs of earlier forwards keep the vector they saved)."""
    init_type = layer.lora_velora_init_type[adapter]
    if init_type == "random" or (init_type == "batch_average_once" and layer.lora_velora_initialized[adapter]):
        return
    current = layer.lora_velora_embed[adapter]
    embed = batch_projection(x, layer.lora_velora_num_groups[adapter])
    layer.lora_velora_embed[adapter] = embed.to(device=current.device, dtype=current.dtype)
    layer.lora_velora_initialized[adapter] = True


def build(config: Any, module_name: str, module: nn.Module) -> VeloraVariant:
    """The VeLoRA variant of layer ``module_name`` (``module`` its base layer).

    Raises:
        TargetingError: ``module`` is not an ``nn.Linear`` / ``Conv1D`` (embeddings, convolutions, attention
            modules), or is a bitsandbytes-quantized linear layer.
        ConfigError: VeLoRA combined with DoRA or the MiCA initialisation.
    """
    settings: VeloraConfig = config.velora_config  # a VeloraConfig (LoraConfig converts dicts); set when called
    if config.use_dora or config.init_lora_weights == "mica":
        other = "use_dora=True" if config.use_dora else "init_lora_weights='mica'"
        raise ConfigError(f"velora_config and {other} are two LoRA variants that do not combine; choose one.")
    backend = backend_for(module)
    quantized = backend is not None and backend.name.startswith("bitsandbytes")
    if quantized or not isinstance(module, (nn.Linear, Conv1D)):
        kind = backend.name if quantized and backend is not None else type(module).__name__
        raise TargetingError(
            f"VeLoRA (velora_config) adapts nn.Linear / Conv1D layers only, and {module_name!r} is a {kind}; leave "
            "it out of target_modules or set velora_config=None."
        )
    return VeloraVariant(settings)
