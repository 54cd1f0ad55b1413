"""LoRA and its variants (rsLoRA, DoRA, PiSSA/OLoRA initialisation)."""
