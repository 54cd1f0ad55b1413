"""IA3: learned vectors that rescale attention outputs and feed-forward inputs (Liu et al., 2022)."""
