"""Prefix tuning (Li & Liang, 2021): trainable keys and values prepended to every attention layer."""
