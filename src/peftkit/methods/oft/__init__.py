"""OFT: orthogonal fine-tuning with block-diagonal Cayley rotations (Qiu et al., 2023)."""
