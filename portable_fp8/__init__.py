"""portable-fp8: one FP8 operator API with pluggable backends."""
