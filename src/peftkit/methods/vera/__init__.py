"""VeRA: frozen random projections shared by every layer, scaled by small trained vectors (Kopiczko et al., 2024)."""
