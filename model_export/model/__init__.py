"""Image encoder, text encoder, fusion head and baselines (torch)."""
