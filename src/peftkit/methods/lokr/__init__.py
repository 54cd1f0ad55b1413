"""LoKr: low-rank Kronecker product adapters (Yeh et al., 2023, LyCORIS; Edalati et al., 2022, KronA)."""
