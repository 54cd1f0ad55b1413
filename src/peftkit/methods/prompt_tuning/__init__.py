"""Prompt tuning (Lester et al., 2021): trainable embeddings of virtual tokens prepended to the input."""
