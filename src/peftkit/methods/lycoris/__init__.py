"""What LoHa and LoKr (the LyCORIS family, Yeh et al., 2023) share: config fields, the layer, the method spec."""
