"""LN tuning: a trained copy of each layer-norm (or other small) module is the adapter (Zhao et al., 2023)."""
