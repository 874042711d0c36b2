"""Plausible-defect backends: each a real backend (reference or cpu) with one defect.

Every mutant names the clause of ``docs/contract.md`` it breaks (``clause``), the case-id
globs of the quick profile that must fail on it (``catch``) and globs of cases its defect
cannot touch, which must still pass (``spare``: the suite is not just failing everything).
``tests/test_conformance_mutants.py`` runs them; ``docs/conformance/README.md`` tabulates
them by clause.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from portable_fp8.backends.cpu import CpuBackend
from portable_fp8.backends.nvidia import HOPPER_FAST_ACCUMULATOR
from portable_fp8.backends.reference import ReferenceBackend

from portable_fp8.dispatch.backend import CastTranspose
from portable_fp8.numerics.cast import (
    as_fp8_tensor,
    codes_of,
    codes_to_float,
    round_to_codes,
    scaled_fp32,
)
from portable_fp8.numerics.formats import Format
from portable_fp8.numerics.gemm import FP32_ACCUMULATOR, AccumulatorModel
from portable_fp8.numerics.granularity import GRANULARITIES, TENSORWISE
from portable_fp8.numerics.scaling import scale_from_amax
from portable_fp8.numerics.tensor import Fp8Tensor

__all__ = ["Mutant", "MUTANTS", "CLAUSES"]

#: The clauses of docs/contract.md (section names) the table in the docs is keyed by.
CLAUSES = (
    "Formats",
    "Scale convention",
    "Cast to FP8: rounding",
    "Cast to FP8: overflow and specials",
    "Stochastic rounding",
    "amax and scale from amax",
    "Cast and transpose",
    "Scaling granularities",
    "Scaled GEMM: accumulation",
    "Scaled GEMM: specials, bias and C",
    "Whole results (every op)",
)


@dataclass(frozen=True)
class Mutant:
    backend: type
    clause: str
    catch: tuple[str, ...]
    spare: tuple[str, ...]


# -- casts ---------------------------------------------------------------------------------


class TiesAwayFromZero(ReferenceBackend):
    """Rounds ties away from zero (round half up in magnitude) instead of to even."""

    name = "mutant-ties"

    def cast_to_fp8(self, x, fmt: Format, scale, granularity, *, saturate, rand_bits):
        if rand_bits is not None:
            return super().cast_to_fp8(
                x, fmt, scale, granularity, saturate=saturate, rand_bits=rand_bits
            )
        y = scaled_fp32(x, granularity.per_element(scale, x.shape))
        # Nudging |y| up by one fp32 ulp moves exact ties (and only them) to the upper side.
        nudged = torch.nextafter(y, torch.where(y < 0, -torch.inf, torch.inf))
        return as_fp8_tensor(round_to_codes(nudged, fmt, saturate=saturate), fmt)


class DoubleRounding(ReferenceBackend):
    """Rounds fp32 inputs to bf16 first (an intermediate type), then to the format."""

    name = "mutant-double-round"

    def cast_to_fp8(self, x, fmt: Format, scale, granularity, *, saturate, rand_bits):
        y = scaled_fp32(x, granularity.per_element(scale, x.shape)).to(torch.bfloat16)
        return super().cast_to_fp8(
            y, fmt, torch.ones_like(scale), granularity, saturate=saturate, rand_bits=rand_bits
        )


class FlushSubnormals(ReferenceBackend):
    """Flushes subnormal results of casts to (signed) zero."""

    name = "mutant-ftz"

    def cast_to_fp8(self, x, fmt: Format, scale, granularity, *, saturate, rand_bits):
        q = super().cast_to_fp8(x, fmt, scale, granularity, saturate=saturate, rand_bits=rand_bits)
        if fmt.is_scale_format:
            return q
        codes = codes_of(q).clone()
        magnitude = codes & 0x7F
        sub = (magnitude != 0) & (magnitude < (1 << fmt.mantissa_bits))
        zero = codes & 0x80 if fmt.has_negative_zero else torch.zeros_like(codes)
        return as_fp8_tensor(torch.where(sub, zero, codes), fmt)


class WrongNanCode(ReferenceBackend):
    """E4M3FN: NaN inputs become the max code (0x7E | sign), as a clamp-first cast does."""

    name = "mutant-nan-max"

    def cast_to_fp8(self, x, fmt: Format, scale, granularity, *, saturate, rand_bits):
        q = super().cast_to_fp8(x, fmt, scale, granularity, saturate=saturate, rand_bits=rand_bits)
        if fmt.name != "e4m3fn":
            return q
        codes = codes_of(q)
        nan = (codes & 0x7F) == 0x7F
        return as_fp8_tensor(torch.where(nan, codes - 1, codes), fmt)


class FnuzNegativeZero(ReferenceBackend):
    """FNUZ: a negative value that rounds to zero gets the sign bit (0x80, FNUZ's NaN)."""

    name = "mutant-fnuz-negzero"

    def cast_to_fp8(self, x, fmt: Format, scale, granularity, *, saturate, rand_bits):
        q = super().cast_to_fp8(x, fmt, scale, granularity, saturate=saturate, rand_bits=rand_bits)
        if fmt.name not in ("e4m3fnuz", "e5m2fnuz"):
            return q
        y = scaled_fp32(x, granularity.per_element(scale, x.shape))
        codes = codes_of(q)
        return as_fp8_tensor(torch.where((codes == 0) & (y < 0), 0x80, codes).to(torch.uint8), fmt)


class Clamp448(ReferenceBackend):
    """Saturates at E4M3FN's 448 where the format says 240: Gaudi2's E4M3 keeps codes up to
    448, and E4M3FNUZ is "saturated" by clamping to +-448 before a non-saturating convert
    (so 240 < |y| <= 448 becomes NaN instead of +-240)."""

    name = "mutant-448"

    def cast_to_fp8(self, x, fmt: Format, scale, granularity, *, saturate, rand_bits):
        if fmt.name == "e4m3_gaudi2":
            fmt = dataclasses.replace(fmt, max=448.0)
        if fmt.name == "e4m3fnuz" and saturate and rand_bits is None:
            y = scaled_fp32(x, granularity.per_element(scale, x.shape)).clamp(-448.0, 448.0)
            return as_fp8_tensor(round_to_codes(y, fmt, saturate=False), fmt)
        return super().cast_to_fp8(
            x, fmt, scale, granularity, saturate=saturate, rand_bits=rand_bits
        )


class E5m2OverflowNan(ReferenceBackend):
    """Non-saturating E5M2 casts give NaN on overflow where the contract says +-inf."""

    name = "mutant-e5m2-nosat-nan"

    def cast_to_fp8(self, x, fmt: Format, scale, granularity, *, saturate, rand_bits):
        q = super().cast_to_fp8(x, fmt, scale, granularity, saturate=saturate, rand_bits=rand_bits)
        if fmt.name != "e5m2" or saturate:
            return q
        codes = codes_of(q)
        inf = (codes & 0x7F) == 0x7C
        return as_fp8_tensor(torch.where(inf, codes | 0x03, codes), fmt)


class InvertedScale(ReferenceBackend):
    """Divides by the quantisation scale where it must multiply (scale and 1/scale mixed up)."""

    name = "mutant-invscale"

    def cast_to_fp8(self, x, fmt: Format, scale, granularity, *, saturate, rand_bits):
        return super().cast_to_fp8(
            x, fmt, torch.reciprocal(scale), granularity, saturate=saturate, rand_bits=rand_bits
        )


# -- stochastic rounding -------------------------------------------------------------------


class NearestInsteadOfStochastic(ReferenceBackend):
    """Declares stochastic rounding but rounds to nearest whatever the random bits."""

    name = "mutant-nosr"

    def cast_to_fp8(self, x, fmt: Format, scale, granularity, *, saturate, rand_bits):
        return super().cast_to_fp8(x, fmt, scale, granularity, saturate=saturate, rand_bits=None)


class SrMovesExactValues(ReferenceBackend):
    """Stochastic rounding adds the word as dither before truncating, so an exactly
    representable value with the word 0xFFFFFFFF moves one code away from zero."""

    name = "mutant-sr-exact"

    def cast_to_fp8(self, x, fmt: Format, scale, granularity, *, saturate, rand_bits):
        q = super().cast_to_fp8(x, fmt, scale, granularity, saturate=saturate, rand_bits=rand_bits)
        if rand_bits is None or fmt.is_scale_format:
            return q
        y = scaled_fp32(x, granularity.per_element(scale, x.shape))
        codes = codes_of(q)
        exact = (codes_to_float(codes, fmt) == y) & (y != 0) & (rand_bits == -1)
        finite_below_max = exact & (codes_to_float(codes, fmt).abs() < fmt.max)
        return as_fp8_tensor(torch.where(finite_below_max, codes + 1, codes), fmt)


# -- amax and scales -----------------------------------------------------------------------


class AmaxIgnoresNan(ReferenceBackend):
    """amax skips NaN (a nanmax) instead of returning NaN for a block holding one."""

    name = "mutant-amax-nan"

    def amax(self, x, granularity):
        return super().amax(
            torch.nan_to_num(x, nan=0.0, posinf=torch.inf, neginf=-torch.inf), granularity
        )


class ZeroAmaxInfScale(CpuBackend):
    """Scale from amax divides by a zero amax (s = inf) instead of using s = 1."""

    name = "mutant-zero-amax"

    def quantize_dynamic(self, x, fmt, granularity, *, margin, power_of_two, saturate, rand_bits):
        q = super().quantize_dynamic(
            x,
            fmt,
            granularity,
            margin=margin,
            power_of_two=power_of_two,
            saturate=saturate,
            rand_bits=rand_bits,
        )
        if granularity.power_of_two:
            return q
        amax = self.amax(x, granularity)
        scale = torch.where(amax == 0, torch.inf, q.scale)
        return Fp8Tensor(q.data, scale, fmt, granularity)


class MxScaleAsCurrent(ReferenceBackend):
    """MX granularities get the current-scaling scale (max / amax) instead of OCP MX's
    shared-exponent rule."""

    name = "mutant-mx-scale"

    def quantize_dynamic(self, x, fmt, granularity, *, margin, power_of_two, saturate, rand_bits):
        if not granularity.power_of_two:
            return super().quantize_dynamic(
                x,
                fmt,
                granularity,
                margin=margin,
                power_of_two=power_of_two,
                saturate=saturate,
                rand_bits=rand_bits,
            )
        amax = self.amax(x, granularity)
        scale = scale_from_amax(amax, fmt, margin=margin, power_of_two=True)
        data = self.cast_to_fp8(x, fmt, scale, granularity, saturate=saturate, rand_bits=rand_bits)
        return Fp8Tensor(data, scale, fmt, granularity)


# -- granularities -------------------------------------------------------------------------


class DequantFirstScaleOnly(ReferenceBackend):
    """Dequantisation applies the first block's factor to every element (ignores per-block
    scales), which tensorwise-only tests cannot see."""

    name = "mutant-dequant-blocks"

    def cast_from_fp8(self, q, fmt: Format, scale_inv, granularity, out_dtype):
        first = scale_inv.reshape(-1)[:1].reshape(())
        return super().cast_from_fp8(q, fmt, first, TENSORWISE, out_dtype)


class SquareScaleLayout(ReferenceBackend):
    """Takes the layout of a per-row/per-column scale from its length: for a square tensor
    it cannot tell rowwise from columnwise and applies a rowwise scale per column."""

    name = "mutant-square-layout"

    def _guess(self, granularity, scale, shape):
        if granularity.name == "rowwise" and len(shape) == 2 and shape[0] == shape[1]:
            return GRANULARITIES["columnwise"], scale.reshape(1, -1)
        return granularity, scale

    def cast_to_fp8(self, x, fmt: Format, scale, granularity, *, saturate, rand_bits):
        g, s = self._guess(granularity, scale, tuple(x.shape))
        return super().cast_to_fp8(x, fmt, s, g, saturate=saturate, rand_bits=rand_bits)

    def cast_from_fp8(self, q, fmt: Format, scale_inv, granularity, out_dtype):
        g, s = self._guess(granularity, scale_inv, tuple(q.shape))
        return super().cast_from_fp8(q, fmt, s, g, out_dtype)


class GemmSquareScaleSwap(CpuBackend):
    """Rowwise x columnwise GEMM with M = N: A's and B's factors swapped (both have length
    M = N, and the kernel picks them up by position)."""

    name = "mutant-gemm-square"

    def scaled_mm(self, a, b, *, out_dtype, bias, c, fast_accum=False):
        if (a.granularity.name, b.granularity.name) == ("rowwise", "columnwise") and (
            a.scale.numel() == b.scale.numel()
        ):
            a, b = (
                Fp8Tensor(a.data, b.scale.reshape(a.scale.shape), a.format, a.granularity),
                Fp8Tensor(b.data, a.scale.reshape(b.scale.shape), b.format, b.granularity),
            )
        return super().scaled_mm(a, b, out_dtype=out_dtype, bias=bias, c=c, fast_accum=fast_accum)


class GemmPartialBlock(CpuBackend):
    """Blockwise GEMM whose last, partial 128-column block of B takes the previous block's
    factors when K is a multiple of 128 (a fast path that assumes N tiles into blocks)."""

    name = "mutant-gemm-partial-block"

    def scaled_mm(self, a, b, *, out_dtype, bias, c, fast_accum=False):
        k, n = b.shape
        sb = b.scale
        if b.granularity.name == "block_128x128" and k % 128 == 0 and n % 128 and n > 128:
            sb = sb.clone()
            sb[:, -1] = sb[:, -2]
            b = Fp8Tensor(b.data, sb, b.format, b.granularity)
        return super().scaled_mm(a, b, out_dtype=out_dtype, bias=bias, c=c, fast_accum=fast_accum)


# -- cast and transpose --------------------------------------------------------------------


class TransposeByReshape(ReferenceBackend):
    """quantize_transpose stores x's codes reshaped to (N, M) instead of transposed (right
    shape, wrong codes)."""

    name = "mutant-transpose-reshape"

    def quantize_transpose(self, x, fmt, scale, amax, *, margin, power_of_two, saturate):
        r = super().quantize_transpose(
            x, fmt, scale, amax, margin=margin, power_of_two=power_of_two, saturate=saturate
        )
        wrong = r.data.data.reshape(r.transposed.data.shape)
        return CastTranspose(r.data, Fp8Tensor(wrong, r.data.scale, fmt, TENSORWISE), r.amax)


class TransposeView(CpuBackend):
    """quantize_transpose returns the transposed codes as a non-contiguous ``.t()`` view."""

    name = "mutant-transpose-view"

    def quantize_transpose(self, x, fmt, scale, amax, *, margin, power_of_two, saturate):
        r = super().quantize_transpose(
            x, fmt, scale, amax, margin=margin, power_of_two=power_of_two, saturate=saturate
        )
        return CastTranspose(
            r.data, Fp8Tensor(r.data.data.t(), r.data.scale, fmt, TENSORWISE), r.amax
        )


class TransposeSignedAmax(ReferenceBackend):
    """quantize_transpose uses a given amax with its sign (a negative history gives a
    negative scale)."""

    name = "mutant-transpose-amax-sign"

    def quantize_transpose(self, x, fmt, scale, amax, *, margin, power_of_two, saturate):
        if scale is None and amax is not None:
            # No abs(): a negative amax gives a negative scale.
            scale = scale_from_amax(amax, fmt, margin=margin, power_of_two=power_of_two)
        return super().quantize_transpose(
            x, fmt, scale, amax, margin=margin, power_of_two=power_of_two, saturate=saturate
        )


class TransposeIgnoresGivenScale(CpuBackend):
    """quantize_transpose given a scale (delayed or static scaling) writes the codes of x.T
    with the scale of x's own amax (a fused kernel whose second output always uses current
    scaling), while returning the given scale: the FP8 Linear's backward GEMMs then read
    x.T and dy.T codes of another scale. With delayed scaling this shows from the second step
    only (the first step's scale is the current one)."""

    name = "mutant-transpose-given-scale"

    def quantize_transpose(self, x, fmt, scale, amax, *, margin, power_of_two, saturate):
        r = super().quantize_transpose(
            x, fmt, scale, amax, margin=margin, power_of_two=power_of_two, saturate=saturate
        )
        if scale is None:
            return r
        own = super().quantize_transpose(
            x, fmt, None, None, margin=margin, power_of_two=power_of_two, saturate=saturate
        )
        wrong = Fp8Tensor(own.transposed.data, r.data.scale, fmt, TENSORWISE)
        return CastTranspose(r.data, wrong, r.amax)


# -- GEMM ----------------------------------------------------------------------------------


class NarrowAccumulator(ReferenceBackend):
    """Accumulates in 10 mantissa bits but declares an fp32 accumulator."""

    name = "mutant-acc10"

    def __init__(self) -> None:
        super().__init__(accumulator=AccumulatorModel(10, "nearest", 1))
        self.capabilities = dataclasses.replace(self.capabilities, accumulator=FP32_ACCUMULATOR)


class TruncatingAccumulator(ReferenceBackend):
    """An fp32 accumulator that truncates, declared as round-to-nearest fp32."""

    name = "mutant-acc-truncate"

    def __init__(self) -> None:
        super().__init__(accumulator=AccumulatorModel(23, "truncate", 1))
        self.capabilities = dataclasses.replace(self.capabilities, accumulator=FP32_ACCUMULATOR)


class FastTooNarrow(ReferenceBackend):
    """Declares Hopper's fast accumulator but, for fast_accum GEMMs, keeps 5 bits only."""

    name = "mutant-fast5"

    def __init__(self) -> None:
        super().__init__(fast_accumulator=AccumulatorModel(5, "truncate", 1))
        self.capabilities = dataclasses.replace(
            self.capabilities, fast_accumulator=HOPPER_FAST_ACCUMULATOR
        )


class IgnoresBias(ReferenceBackend):
    """A GEMM that drops the bias."""

    name = "mutant-nobias"

    def scaled_mm(self, a, b, *, out_dtype, bias, c, fast_accum=False):
        return super().scaled_mm(a, b, out_dtype=out_dtype, bias=None, c=c, fast_accum=fast_accum)


class InfTimesZeroIsZero(ReferenceBackend):
    """A GEMM that skips zero operands (a zero-skipping multiplier): inf x 0 gives 0, not
    NaN."""

    name = "mutant-inf-zero"

    def scaled_mm(self, a, b, *, out_dtype, bias, c, fast_accum=False):
        a64 = codes_to_float(codes_of(a.data), a.format).double() * a.expanded_scale_inv().double()
        b64 = codes_to_float(codes_of(b.data), b.format).double() * b.expanded_scale_inv().double()
        if not (torch.isinf(a64).any() or torch.isinf(b64).any()):
            return super().scaled_mm(
                a, b, out_dtype=out_dtype, bias=bias, c=c, fast_accum=fast_accum
            )
        prod = a64[:, :, None] * b64[None, :, :]
        zero = (a64 == 0)[:, :, None] | (b64 == 0)[None, :, :]
        out = torch.where(zero, 0.0, prod).sum(1)
        if bias is not None:
            out = out + bias.double()
        if c is not None:
            out = out + c.double()
        return out.float().to(out_dtype)


# -- whole results -------------------------------------------------------------------------


class ScalesInputInPlace(CpuBackend):
    """Multiplies an fp32 input by the scale in place (saving a buffer), then casts it."""

    name = "mutant-in-place"

    def cast_to_fp8(self, x, fmt: Format, scale, granularity, *, saturate, rand_bits):
        if x.dtype != torch.float32 or not x.is_contiguous() or x.numel() == 0:
            return super().cast_to_fp8(
                x, fmt, scale, granularity, saturate=saturate, rand_bits=rand_bits
            )
        x.mul_(granularity.per_element(scale, x.shape))
        return super().cast_to_fp8(
            x, fmt, torch.ones_like(scale), granularity, saturate=saturate, rand_bits=rand_bits
        )


class ReusedOutputBuffer(CpuBackend):
    """scaled_mm writes every result into one cached buffer per shape and dtype."""

    name = "mutant-reused-buffer"

    def __init__(self) -> None:
        super().__init__()
        self._buffers: dict = {}

    def scaled_mm(self, a, b, *, out_dtype, bias, c, fast_accum=False):
        out = super().scaled_mm(a, b, out_dtype=out_dtype, bias=bias, c=c, fast_accum=fast_accum)
        key = (tuple(out.shape), out.dtype)
        buf = self._buffers.setdefault(key, torch.empty_like(out))
        return buf.copy_(out)


class DequantAlwaysFp32(CpuBackend):
    """Dequantisation ignores out_dtype and returns fp32."""

    name = "mutant-dequant-fp32"

    def cast_from_fp8(self, q, fmt: Format, scale_inv, granularity, out_dtype):
        return super().cast_from_fp8(q, fmt, scale_inv, granularity, torch.float32)


MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        WrongNanCode,
        "Formats",
        ("cast/e4m3fn/bf16-all/sat/scale=2^0", "quantize/e4m3fn/*/current/*/specials"),
        ("cast/e5m2/*", "gemm/*", "dequant/*"),
    ),
    Mutant(
        FnuzNegativeZero,
        "Formats",
        ("cast/e4m3fnuz/fp32-edge/sat/scale=2^0", "cast/e5m2fnuz/bf16-all/*"),
        ("cast/e4m3fn/*", "cast/e5m2/*", "gemm/*"),
    ),
    Mutant(
        InvertedScale,
        "Scale convention",
        ("cast/e4m3fn/bf16-all/sat/scale=3.7", "cast/e5m2/fp32-edge/sat/scale=2^-4"),
        ("cast/*/scale=2^0", "gemm/*", "amax/*"),
    ),
    Mutant(
        TiesAwayFromZero,
        "Cast to FP8: rounding",
        ("cast/e4m3fn/fp32-edge/sat/scale=2^0", "cast/e5m2/bf16-all/nosat/scale=2^0"),
        ("amax/*", "gemm/*", "sr/*/explicit-bits"),
    ),
    Mutant(
        DoubleRounding,
        "Cast to FP8: rounding",
        ("cast/e4m3fn/fp32-edge/sat/scale=2^0", "cast/e5m2/fp32-random/*"),
        ("cast/*/bf16-all/*/scale=2^0", "gemm/*", "amax/*"),
    ),
    Mutant(
        FlushSubnormals,
        "Cast to FP8: rounding",
        ("cast/e4m3fn/bf16-all/sat/scale=2^0", "cast/e4m3fnuz/fp32-edge/*", "quantize/*"),
        ("gemm/*", "amax/*", "dequant/*"),
    ),
    Mutant(
        Clamp448,
        "Cast to FP8: overflow and specials",
        (
            "cast/e4m3_gaudi2/fp32-edge/sat/scale=2^0",
            "cast/e4m3_gaudi2/bf16-all/sat/*",
            "cast/e4m3fnuz/fp32-edge/sat/scale=2^0",
        ),
        ("cast/e4m3fn/*", "cast/e4m3fnuz/*/nosat/*", "gemm/*"),
    ),
    Mutant(
        E5m2OverflowNan,
        "Cast to FP8: overflow and specials",
        ("cast/e5m2/fp32-edge/nosat/scale=2^0", "cast/e5m2/fp16-all/nosat/*"),
        ("cast/e5m2/*/sat/*", "cast/e4m3fn/*", "gemm/*"),
    ),
    Mutant(
        NearestInsteadOfStochastic,
        "Stochastic rounding",
        ("sr/e4m3fn/explicit-bits", "sr/e4m3fn/seeded/+near-1/f=0.5", "sr/e5m2/between/*"),
        ("cast/*", "gemm/*", "sr/*/exact/*"),
    ),
    Mutant(
        SrMovesExactValues,
        "Stochastic rounding",
        ("sr/e4m3fn/exact/words=ones", "sr/e5m2/exact/words=ones"),
        ("sr/*/exact/words=zero", "sr/*/between/*", "cast/*", "gemm/*"),
    ),
    Mutant(
        AmaxIgnoresNan,
        "amax and scale from amax",
        ("amax/tensorwise/nan/*", "amax/rowwise/nan/*", "quantize/*/current/*/specials"),
        ("amax/*/random/*", "amax/*/inf/*", "cast/*", "gemm/*"),
    ),
    Mutant(
        ZeroAmaxInfScale,
        "amax and scale from amax",
        ("quantize/e4m3fn/rowwise/current/float32", "quantize/e5m2/block_1x128/current/*"),
        ("quantize/*/static/*", "cast/*", "gemm/*"),
    ),
    Mutant(
        MxScaleAsCurrent,
        "amax and scale from amax",
        ("quantize/e4m3fn/mx_1x32/current/*", "quantize/e5m2/mx_32x1/current/*"),
        ("quantize/*/rowwise/*", "quantize/*/tensorwise/*", "cast/*"),
    ),
    Mutant(
        TransposeByReshape,
        "Cast and transpose",
        ("quantize_transpose/e4m3fn/current/bfloat16/ranges", "quantize_transpose/*/square"),
        ("quantize_transpose/*/empty", "quantize_transpose/*/1x1", "quantize/*", "cast/*"),
    ),
    Mutant(
        TransposeView,
        "Cast and transpose",
        ("quantize_transpose/e4m3fn/current/float32/ranges", "quantize_transpose/*/square"),
        ("quantize/*", "cast/*", "gemm/*"),
    ),
    Mutant(
        TransposeSignedAmax,
        "Cast and transpose",
        ("quantize_transpose/*/given-amax/*",),
        ("quantize_transpose/*/current/*", "quantize_transpose/*/static/*", "quantize/*"),
    ),
    Mutant(
        TransposeIgnoresGivenScale,
        "Cast and transpose",
        ("linear/delayed/*", "linear/static/*"),
        ("linear/current/*", "linear/blockwise/*", "quantize/*", "gemm/*"),
    ),
    Mutant(
        DequantFirstScaleOnly,
        "Scaling granularities",
        ("dequant/e4m3fn/rowwise/130x300/*", "dequant/e5m2/block_128x128/130x300/*"),
        ("dequant/*/all-codes/*", "dequant/*/tensorwise/*", "cast/*", "gemm/*"),
    ),
    Mutant(
        SquareScaleLayout,
        "Scaling granularities",
        ("quantize/e4m3fn/rowwise/current/bfloat16/square", "dequant/*/rowwise/128x128/*"),
        ("quantize/*/rowwise/*/float32", "dequant/*/rowwise/130x300/*", "gemm/*"),
    ),
    Mutant(
        GemmSquareScaleSwap,
        "Scaling granularities",
        (
            "gemm/*/rowwisexcolumnwise/128x128x128/nn/*",
            "gemm/*/rowwisexcolumnwise/128x128x128/tt/*",
        ),
        ("gemm/*/rowwisexcolumnwise/48x320x64/*", "gemm/*/tensorwisextensorwise/*", "cast/*"),
    ),
    Mutant(
        GemmPartialBlock,
        "Scaling granularities",
        ("gemm/*/block_1x128xblock_128x128/48x256x160/*",),
        ("gemm/*/block_1x128xblock_128x128/48x320x64/*", "gemm/*/tensorwisextensorwise/*"),
    ),
    Mutant(
        NarrowAccumulator,
        "Scaled GEMM: accumulation",
        (
            "gemm/e4m3fnxe4m3fn/tensorwisextensorwise/32x*x32/nn/out=float32/positive",
            "fingerprint/accumulator",
        ),
        ("cast/*", "quantize/*", "gemm/*/1x1x1/*"),
    ),
    Mutant(
        TruncatingAccumulator,
        "Scaled GEMM: accumulation",
        ("fingerprint/accumulator",),
        ("cast/*", "quantize/*", "gemm/*/1x1x1/*"),
    ),
    Mutant(
        FastTooNarrow,
        "Scaled GEMM: accumulation",
        ("gemm/*/32x256x32/nn/out=float32/fast-accum/randn", "fingerprint/fast-accumulator"),
        ("gemm/*/out=float32/randn", "fingerprint/accumulator", "cast/*"),
    ),
    Mutant(
        IgnoresBias,
        "Scaled GEMM: specials, bias and C",
        (
            "gemm/e4m3fnxe4m3fn/tensorwisextensorwise/48x160x64/nn/out=float32/bias/randn",
            "gemm/*/out=bfloat16/bias/c/randn",
        ),
        ("gemm/*/out=float32/c/randn", "cast/*"),
    ),
    Mutant(
        InfTimesZeroIsZero,
        "Scaled GEMM: specials, bias and C",
        ("gemm/e5m2xe5m2/*/inf-zero",),
        ("gemm/*/randn", "gemm/*/nan", "cast/*"),
    ),
    Mutant(
        ScalesInputInPlace,
        "Whole results (every op)",
        ("cast/e4m3fn/fp32-edge/sat/scale=3.7", "quantize/e4m3fn/rowwise/static/float32"),
        ("cast/*/bf16-all/*", "gemm/*"),
    ),
    Mutant(
        ReusedOutputBuffer,
        "Whole results (every op)",
        ("gemm/e4m3fnxe4m3fn/tensorwisextensorwise/48x160x64/nn/out=float32/bias/randn",),
        ("cast/*", "quantize/*", "fingerprint/accumulator"),
    ),
    Mutant(
        DequantAlwaysFp32,
        "Whole results (every op)",
        ("dequant/*/all-codes/*/out=bfloat16", "dequant/*/rowwise/*/out=float16"),
        ("dequant/*/out=float32", "cast/*", "gemm/*"),
    ),
)
