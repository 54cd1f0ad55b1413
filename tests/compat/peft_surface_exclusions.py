"""PEFT 0.21.2 public names that peftkit deliberately does not offer, each with its reason.

Keys are bare names (excluded at every path where the reference has them) or ``"module:name"`` for one path.
Names of whole methods peftkit does not implement need no entry: ``test_peft_surface.py`` leaves out every
name defined in ``peft.tuners.<method>`` for a method missing from peftkit's registry, and every
``TRANSFORMERS_MODELS_TO_<METHOD>_...`` table of such a method.
"""

_LORA_VARIANT = "a LoRA variant or initialisation peftkit does not implement"
_MIXED = "PEFT's mixed-model tuner tables; peftkit's PeftMixedModel uses its own tuner, peftkit.mixed_model.MixedModel"
_INTERNAL = "a PEFT internal helper, not part of the documented workflows"
_PREFIX_LAYOUT = "prefix-cache layouts are derived per model by peftkit's prompt machinery, not kept in tables"

EXCLUDED: dict[str, str] = {
    # LoRA variants, initialisations and conversions
    "LoraRuntimeConfig": "runtime options (ephemeral GPU offload) are not implemented",
    "find_kappa_target_modules": _LORA_VARIANT,
    "GPTQLoraLinear": "GPTQ bases are not supported (bitsandbytes and torchao are)",
    "SVDQuantLinear": "GPTQ bases are not supported (bitsandbytes and torchao are)",
    "peft.tuners.adalora:SVDConv2d": "peftkit's AdaLoRA conv layer is SVDConv (Conv1d/2d/3d), also exported as Conv2d",
    "peft.tuners.adalora:RankAllocator": "internal to AdaLoRA's rank allocation (peftkit.methods.adalora.allocator)",
    # mixed models
    "PEFT_TYPE_TO_MIXED_MODEL_MAPPING": _MIXED,
    "MixedModel": _MIXED,
    # prompt-learning helpers
    "TRANSFORMERS_MODELS_TO_PREFIX_TUNING_POSTPROCESS_MAPPING": _PREFIX_LAYOUT,
    "bloom_model_postprocess_past_key_value": _PREFIX_LAYOUT,
    "starcoder_model_postprocess_past_key_value": _PREFIX_LAYOUT,
    "initialize_kv_prefix_from_past_key_values": "initialising a prefix from a cache is not implemented",
    "initialize_kv_prefix_from_text": "initialising a prefix from a cache is not implemented",
    "prompt_embeddings_from_past_key_values": "initialising a prefix from a cache is not implemented",
    "compose_cartridge_adapters": "the Cartridge method is not implemented",
    "shift_tokens_right": "a transformers helper PEFT re-exports; use transformers' own",
    "BasePromptEncoder": _INTERNAL,
    # warnings, internals
    "AuxiliaryTrainingWrapper": "peftkit's modules_to_save wrapper has no separate base class",
    "ALLOWED_COMPUTE_DTYPES": _INTERNAL,
    "UPCAST_DTYPES": _INTERNAL,
    "PeftConfigMixin": "peftkit's configs have one base class, PeftConfig",
    "register_peft_method": "methods are registered by the catalog (peftkit.catalog), not at run time",
    "check_hotswap_configs_compatible": "peftkit checks compatibility inside hotswap_adapter",
    "hotswap_adapter_from_state_dict": "hot-swap from a directory only (hotswap_adapter)",
    "check_import_allowlist": _INTERNAL,
    "get_default_import_allowlist": _INTERNAL,
    "get_embedding_layer_name": _INTERNAL,
    "has_valid_embedding_base_layer": _INTERNAL,
    "torch_load": _INTERNAL,
    "get_gptqmodel_quant_linear": _INTERNAL,
    "get_quantization_config": _INTERNAL,
    "get_quantization_kwargs": _INTERNAL,
    "id_tensor_storage": _INTERNAL,
    "infer_device": _INTERNAL,
    "map_cache_to_layer_device_map": _INTERNAL,
    "quantization_extra_repr": _INTERNAL,
    "resolve_quantization_backend": _INTERNAL,
    "set_additional_trainable_modules": _INTERNAL,
    "transpose": _INTERNAL,
    "peft.tuners.tuners_utils:cast_adapter_dtype": _INTERNAL,
    "peft.tuners.tuners_utils:check_adapters_to_merge": _INTERNAL,
    "peft.tuners.tuners_utils:clone_module": _INTERNAL,
    "peft.tuners.tuners_utils:delete_adapter": "PEFT's internal form (prefix, layer class); use delete_adapter",
    "peft.tuners.tuners_utils:find_parameter_name_by_module": _INTERNAL,
    "peft.tuners.tuners_utils:get_device_map": _INTERNAL,
    "peft.tuners.tuners_utils:inspect_matched_modules": _INTERNAL,
    "peft.tuners.tuners_utils:onload_layer": _INTERNAL,
    "peft.tuners.tuners_utils:replicate_layers": "layer_replication is not implemented",
    "peft.tuners.tuners_utils:set_adapter": "PEFT's internal form (layer class); use PeftModel.set_adapter",
}
