"""The ``triton`` backend: casts and GEMMs all as our own Triton kernels.

GEMMs: tensorwise, rowwise x columnwise and 1x128 x 128x128, with the partial sums promoted
to fp32 every 128 elements of K (see :mod:`._triton_gemm`). Runs on CUDA devices of compute
capability >= 8.9, or on CPU tensors in Triton's interpreter (``TRITON_INTERPRET=1``), where
CI checks it against the reference emulator.
"""

from __future__ import annotations

import torch

from portable_fp8.dispatch.backend import Backend
from portable_fp8.dispatch.hookspecs import hookimpl
from portable_fp8.numerics.tensor import Fp8Tensor

from ._base import GEMM_MODES, NvidiaBackend

__all__ = ["TritonBackend", "portable_fp8_backends"]


class TritonBackend(NvidiaBackend):
    """Everything in Triton: casts, quantisation, scaled GEMMs."""

    name = "triton"
    priority = 40
    interpretable = True

    def __init__(self) -> None:
        super().__init__(
            e5m2_pair=True,
            notes=(
                "GEMMs: Triton tl.dot on FP8, partial sums promoted to fp32 every 128 of K",
                "casts: Triton kernels with integer round-to-nearest-even / stochastic rounding",
                "B is read column-major (K-major); a row-major B is copied first",
            ),
        )

    def describe(self) -> dict:
        facts = super().describe()
        facts["gemm_path"] = "Triton scaled GEMM kernel (tensorwise, rowwise, 1x128x128x128)"
        return facts

    def scaled_mm(
        self,
        a: Fp8Tensor,
        b: Fp8Tensor,
        *,
        out_dtype: torch.dtype,
        bias: torch.Tensor | None,
        c: torch.Tensor | None,
        fast_accum: bool = False,
    ) -> torch.Tensor:
        # No fast accumulator declared: fast_accum is ignored (fp32 is at least as accurate).
        from . import _triton_gemm

        mode = GEMM_MODES[(a.granularity.name, b.granularity.name)]
        return _triton_gemm.scaled_mm(
            a,
            b,
            a.scale_inv,
            b.scale_inv,
            mode,
            out_dtype=out_dtype,
            bias=None if bias is None else bias.contiguous(),
            c=c,
        )


@hookimpl
def portable_fp8_backends() -> list[Backend]:
    return [TritonBackend()]
