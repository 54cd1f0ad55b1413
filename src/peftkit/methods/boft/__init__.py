"""BOFT: orthogonal fine-tuning with butterfly-factorised rotations (Liu et al., 2024)."""
