"""The hook through which LoRA variants change a LoRA layer: one :class:`LoraVariant` object per adapter.

PEFT configures its LoRA variants (KaSA, VeLoRA, BD-LoRA, aLoRA, MonteCLoRA, ...) through ``LoraConfig`` fields
and keeps, per layer, ``lora_variant: dict[adapter, variant]``; peftkit does the same. A variant's module lives
in :mod:`peftkit.methods.lora.variants` (one file per variant) and is registered in
:data:`peftkit.methods.lora.variants.VARIANT_BUILDERS` under the config field that switches it on. For every
layer the LoRA method adapts, :func:`build_variant` asks each builder whose field is set for the variant of that
layer (``None``: this layer runs plain LoRA; :class:`~peftkit.errors.UnsupportedError`: the variant cannot adapt
this kind of layer).

The layer then calls, for an adapter with a variant:

* :meth:`LoraVariant.init` once, after ``A`` and ``B`` exist and are initialised (extra tensors, a different
  initialisation; extra per-adapter containers are added to ``layer.adapter_layer_names`` so they are saved,
  loaded, trained and deleted as ``lora_A`` is);
* :meth:`LoraVariant.finish` once every layer of an injection exists (LoRA's ``after_inject``);
* :meth:`LoraVariant.adapt_output` in the forward instead of ``result + s B A dropout(x)`` (the fused fast paths,
  mixed batches' stacked path and the compiled path step aside for such an adapter);
* :meth:`LoraVariant.delta_weight` for merging and ``get_delta_weight`` (``mergeable = False``: merging raises).

Deleting the adapter drops ``layer.lora_variant[adapter]`` and the adapter's entry in every container of
``adapter_layer_names`` and ``other_param_names``. Hot-swapping into a variant's slot needs the new adapter's
variant to compare equal (``==``: define ``__eq__`` on per-layer settings, identity otherwise) at the same rank;
padding a variant adapter's rank for compiled hot-swap is refused (see :mod:`peftkit.hotswap`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch

if TYPE_CHECKING:
    from peftkit.methods.lora.layer import Linear, LoraLayer


class LoraVariant:
    """Plain LoRA's behaviour, which a variant overrides where it differs. Stateless across layers is fine:
    per-adapter state belongs on the layer (in a container listed in ``adapter_layer_names`` when it is a
    tensor that is saved)."""

    #: PEFT's name for the variant (``LORA_VARIANTS`` of :mod:`peftkit.catalog`).
    name: ClassVar[str] = "lora"
    #: Whether ``merge_and_unload`` / ``merge_adapter`` can fold the adapter into the base weight.
    mergeable: ClassVar[bool] = True

    def init(self, layer: LoraLayer, adapter: str, spec: Any) -> None:
        """Called by ``update_layer`` after the factors are created (and initialised, unless a load follows)."""

    def finish(self, layer: LoraLayer, adapter: str) -> None:
        """Called once every layer of the injection exists: a step that must not run when a later layer is refused
        (rewriting the base weight), as ``init`` runs layer by layer."""

    def adapt_output(self, layer: Linear, result: torch.Tensor, x: torch.Tensor, adapter: str) -> torch.Tensor:
        """The layer's output with this adapter applied to ``result`` (the base output, or the output of the
        adapters applied before), ``x`` the layer's input: ``result + s B A dropout(x)`` for plain LoRA."""
        return layer.plain_adapt_output(result, x, adapter)

    def delta_weight(self, layer: LoraLayer, adapter: str) -> torch.Tensor | None:
        """``Delta W`` that merging adds to the base weight (shaped like it; ``None``: plain LoRA's)."""
        return None

    def supports_lora_conversion(self) -> bool:
        """Whether the layer's output is ``base(x) + Delta W x`` on the unchanged base, so that
        :func:`~peftkit.convert_to_lora` can approximate the adapter (PEFT's name): as mergeable, by default."""
        return self.mergeable
