"""Optimizers whose moment states are stored in FP8 with one fp32 scale per block."""

from portable_fp8.optim.adam import Adam, AdamW

__all__ = ["Adam", "AdamW"]
