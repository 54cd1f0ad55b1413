"""AdaLoRA: LoRA in SVD form with importance-based rank allocation (Zhang et al., 2023)."""
