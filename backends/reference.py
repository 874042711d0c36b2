"""The ``reference`` backend: the emulator itself, exposed as a backend.

Slow, exact and the definition of conformance. Runs on CPU tensors; other backends and the
conformance suite compare against it.
"""

from __future__ import annotations

from portable_fp8.dispatch.backend import Backend, Capabilities
from portable_fp8.dispatch.hookspecs import hookimpl
from portable_fp8.numerics.cast import (
    as_fp8_tensor,
    codes_of,
    codes_to_float,
    round_to_codes,
    scaled_fp32,
)
from portable_fp8.numerics.formats import FORMATS, Format, element_formats
from portable_fp8.numerics.gemm import AccumulatorModel, reference_scaled_mm
from portable_fp8.numerics.granularity import GRANULARITIES
from portable_fp8.numerics.tensor import Fp8Tensor

__all__ = ["ReferenceBackend", "portable_fp8_backends"]


class ReferenceBackend(Backend):
    """The reference emulator as a backend (CPU only)."""

    name = "reference"
    priority = 0

    def __init__(
        self,
        accumulator: AccumulatorModel | None = None,
        fast_accumulator: AccumulatorModel | None = None,
    ) -> None:
        """``accumulator``: the GEMM accumulator emulated (None: the exact sum);
        ``fast_accumulator``: the one emulated for ``fast_accum=True`` GEMMs (None: declare
        no fast mode). Both model another device's numerics on the CPU."""
        names = [f.name for f in element_formats()]
        self.accumulator = accumulator
        self.fast_accumulator = fast_accumulator
        self.capabilities = Capabilities(
            devices=frozenset({"cpu"}),
            cast_formats=frozenset(FORMATS),
            gemm_formats=frozenset((a, b) for a in names for b in names),
            granularities=frozenset(GRANULARITIES),
            accumulator=accumulator,
            fast_accumulator=fast_accumulator,
            global_scale=True,
            notes=("the numerics contract executed on the CPU; exact-sum GEMM",),
        )

    def cast_to_fp8(self, x, fmt: Format, scale, granularity, *, saturate, rand_bits):
        y = scaled_fp32(x, granularity.per_element(scale, x.shape))
        codes = round_to_codes(y, fmt, saturate=saturate, rand_bits=rand_bits)
        return as_fp8_tensor(codes, fmt)

    def cast_from_fp8(self, q, fmt: Format, scale_inv, granularity, out_dtype):
        values = codes_to_float(codes_of(q), fmt)
        return (values * granularity.per_element(scale_inv, q.shape)).to(out_dtype)

    def scaled_mm(self, a: Fp8Tensor, b: Fp8Tensor, *, out_dtype, bias, c, fast_accum=False):
        return reference_scaled_mm(
            a.data,
            b.data,
            a.format,
            b.format,
            a.scale,
            b.scale,
            a.granularity,
            b.granularity,
            out_dtype=out_dtype,
            bias=bias,
            c=c,
            accumulator=self.fast_accumulator if fast_accum else self.accumulator,
            a_global_scale=a.global_scale,
            b_global_scale=b.global_scale,
        )


@hookimpl
def portable_fp8_backends() -> list[Backend]:
    return [ReferenceBackend()]
