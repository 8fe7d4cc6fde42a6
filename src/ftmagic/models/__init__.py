"""Model loading and generation, below both ``ftmagic.train`` and ``ftmagic.tracking``."""
