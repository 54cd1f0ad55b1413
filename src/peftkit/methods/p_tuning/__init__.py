"""P-tuning (Liu et al., 2021): virtual token embeddings produced by a small MLP or LSTM encoder."""
