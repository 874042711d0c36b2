"""NVIDIA backends: ``cuda`` (cuBLASLt GEMMs, Triton casts) and ``triton`` (all Triton).

Each module (:mod:`.cuda`, :mod:`.triton`) is its own plugin under the ``portable_fp8``
entry-point group. Importing this package needs no triton and no GPU; the backends report
themselves unavailable, with the reason, where they cannot run.
"""

from ._facts import DEEPGEMM_PROMOTED_ACCUMULATOR, HOPPER_FAST_ACCUMULATOR

__all__ = ["HOPPER_FAST_ACCUMULATOR", "DEEPGEMM_PROMOTED_ACCUMULATOR"]
