"""Data: reading, rules, rendering, packing, preview and validation of training data."""
