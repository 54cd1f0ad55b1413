"""LoHa: low-rank Hadamard product adapters (Hyeon-Woo et al., 2022, FedPara; LyCORIS, Yeh et al., 2023)."""
