"""NVIDIA vendor facts as data: the accumulator models of FP8 tensor-core GEMMs.

The mechanism (:class:`~portable_fp8.numerics.gemm.AccumulatorModel` and the emulator that
runs it) is the core's; these instances are what NVIDIA hardware is known to do. Hopper's
fast-accumulation mode keeps about 14 significant bits per the DeepSeek-V3 technical report
(arXiv:2412.19437, section 3.3.2).
"""

from __future__ import annotations

from portable_fp8.numerics.gemm import AccumulatorModel

__all__ = ["HOPPER_FAST_ACCUMULATOR", "DEEPGEMM_PROMOTED_ACCUMULATOR"]

#: Hopper FP8 fast accumulation as reported by DeepSeek-V3: about 14 bits kept, truncated,
#: 32 products (one wgmma k-step of FP8) per addition, never promoted.
HOPPER_FAST_ACCUMULATOR = AccumulatorModel(13, "truncate", 32)
#: The same tensor-core accumulator promoted to fp32 every 128 elements of K (DeepGEMM).
DEEPGEMM_PROMOTED_ACCUMULATOR = AccumulatorModel(13, "truncate", 32, promote_every=128)
