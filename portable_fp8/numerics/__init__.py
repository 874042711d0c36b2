"""The numerics contract in code (see docs/contract.md).

Formats, granularities and scale rules as data; the quantised tensor; and the reference
emulator's casts (:mod:`.cast`) and GEMMs (:mod:`.gemm`), bit-exact and CPU-only. This
layer imports nothing of portable_fp8 but :mod:`portable_fp8.errors`.
"""
