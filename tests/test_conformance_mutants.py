"""The suite must be able to fail: deliberately wrong backends are each reported as failed.

Each mutant is the reference backend with one defect. The test runs the quick profile on it
and asserts that the cases exercising the defect fail (named by id), and that cases the
defect cannot touch still pass (so the suite is not just failing everything).
"""

from __future__ import annotations

import dataclasses
import fnmatch

import pytest
import torch
from portable_fp8.backends.reference import ReferenceBackend
from portable_fp8.conformance import Verdict, run_suite

from portable_fp8.numerics.cast import as_fp8_tensor, codes_of, round_to_codes, scaled_fp32
from portable_fp8.numerics.formats import Format
from portable_fp8.numerics.gemm import (
    FP32_ACCUMULATOR,
    HOPPER_FAST_ACCUMULATOR,
    AccumulatorModel,
)
from portable_fp8.numerics.granularity import as_2d_shape


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Run single-threaded: on a loaded 2-core machine torch's intra-op threads spin-wait
    on each other and the many small kernels here slow down 20-fold; numerics are judged
    by bounds, so the thread count changes no verdict."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _per_element(scale, granularity, shape):
    if granularity.is_tensorwise:
        return scale.reshape(())
    return granularity.expand(scale, as_2d_shape(shape)).reshape(shape)


class TiesAwayFromZero(ReferenceBackend):
    """Rounds ties away from zero (round half up in magnitude) instead of to even."""

    name = "mutant-ties"

    def cast_to_fp8(self, x, fmt: Format, scale, granularity, *, saturate, rand_bits):
        if rand_bits is not None:
            return super().cast_to_fp8(
                x, fmt, scale, granularity, saturate=saturate, rand_bits=rand_bits
            )
        y = scaled_fp32(x, _per_element(scale, granularity, x.shape))
        # Nudging |y| up by one fp32 ulp moves exact ties (and only them) to the upper side.
        nudged = torch.nextafter(y, torch.where(y < 0, -torch.inf, torch.inf))
        return as_fp8_tensor(round_to_codes(nudged, fmt, saturate=saturate), fmt)


class FlushSubnormals(ReferenceBackend):
    """Flushes subnormal results of casts to (signed) zero."""

    name = "mutant-ftz"

    def cast_to_fp8(self, x, fmt: Format, scale, granularity, *, saturate, rand_bits):
        q = super().cast_to_fp8(x, fmt, scale, granularity, saturate=saturate, rand_bits=rand_bits)
        if fmt.exponent_only:
            return q
        codes = codes_of(q).clone()
        magnitude = codes & fmt.magnitude_mask
        sub = (magnitude != 0) & (magnitude < (1 << fmt.mantissa_bits))
        zero = codes & 0x80 if fmt.has_negative_zero else torch.zeros_like(codes)
        return as_fp8_tensor(torch.where(sub, zero, codes), fmt)


class Clamp448(ReferenceBackend):
    """Saturates at E4M3FN's 448 where the format says 240: Gaudi2's E4M3 keeps codes up to
    448, and E4M3FNUZ is "saturated" by clamping to +-448 before a non-saturating convert
    (so 240 < |y| <= 448 becomes NaN instead of +-240)."""

    name = "mutant-448"

    def cast_to_fp8(self, x, fmt: Format, scale, granularity, *, saturate, rand_bits):
        if fmt.name == "e4m3_gaudi2":
            fmt = dataclasses.replace(fmt, max=448.0)
        if fmt.name == "e4m3fnuz" and saturate and rand_bits is None:
            y = scaled_fp32(x, _per_element(scale, granularity, x.shape)).clamp(-448.0, 448.0)
            return as_fp8_tensor(round_to_codes(y, fmt, saturate=False), fmt)
        return super().cast_to_fp8(
            x, fmt, scale, granularity, saturate=saturate, rand_bits=rand_bits
        )


class InvertedScale(ReferenceBackend):
    """Divides by the quantisation scale where it must multiply (scale and 1/scale mixed up)."""

    name = "mutant-invscale"

    def cast_to_fp8(self, x, fmt: Format, scale, granularity, *, saturate, rand_bits):
        return super().cast_to_fp8(
            x, fmt, torch.reciprocal(scale), granularity, saturate=saturate, rand_bits=rand_bits
        )


class NarrowAccumulator(ReferenceBackend):
    """Accumulates in 10 mantissa bits but declares an fp32 accumulator."""

    name = "mutant-acc10"

    def __init__(self) -> None:
        super().__init__(accumulator=AccumulatorModel(10, "nearest", 1))
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
        return super().scaled_mm(a, b, out_dtype=out_dtype, bias=None, c=c)


class NearestInsteadOfStochastic(ReferenceBackend):
    """Declares stochastic rounding but rounds to nearest whatever the random bits."""

    name = "mutant-nosr"

    def cast_to_fp8(self, x, fmt: Format, scale, granularity, *, saturate, rand_bits):
        return super().cast_to_fp8(x, fmt, scale, granularity, saturate=saturate, rand_bits=None)


#: mutant -> (globs of case ids that must fail, globs of case ids that must still pass)
MUTANTS = {
    TiesAwayFromZero: (
        ["cast/e4m3fn/fp32-edge/sat/scale=2^0", "cast/e5m2/bf16-all/nosat/scale=2^0"],
        ["amax/*", "gemm/*", "sr/*/explicit-bits"],
    ),
    FlushSubnormals: (
        ["cast/e4m3fn/bf16-all/sat/scale=2^0", "cast/e4m3fnuz/fp32-edge/*", "quantize/*"],
        ["gemm/*", "amax/*", "dequant/*"],
    ),
    Clamp448: (
        [
            "cast/e4m3_gaudi2/fp32-edge/sat/scale=2^0",
            "cast/e4m3_gaudi2/bf16-all/sat/*",
            "cast/e4m3fnuz/fp32-edge/sat/scale=2^0",
        ],
        ["cast/e4m3fn/*", "cast/e4m3fnuz/*/nosat/*", "gemm/*"],
    ),
    InvertedScale: (
        ["cast/e4m3fn/bf16-all/sat/scale=3.7", "cast/e5m2/fp32-edge/sat/scale=2^-4"],
        ["cast/*/scale=2^0", "gemm/*", "amax/*"],
    ),
    NarrowAccumulator: (
        ["gemm/e4m3fnxe4m3fn/tensorwisextensorwise/32x2048x32/nn/out=float32/positive"],
        ["cast/*", "quantize/*", "gemm/*/1x1x1/*"],
    ),
    FastTooNarrow: (
        ["gemm/*/32x256x32/nn/out=float32/fast-accum/randn", "gemm/*/fast-accum/positive"],
        ["gemm/*/out=float32/randn", "gemm/*/out=float32/positive", "cast/*"],
    ),
    IgnoresBias: (
        [
            "gemm/e4m3fnxe4m3fn/tensorwisextensorwise/48x160x64/nn/out=float32/bias/randn",
            "gemm/*/out=bfloat16/bias/c/randn",
        ],
        ["gemm/*/out=float32/c/randn", "cast/*"],
    ),
    NearestInsteadOfStochastic: (
        ["sr/e4m3fn/explicit-bits", "sr/e4m3fn/seeded/+near-1/f=0.5", "sr/e5m2/seeded/-top/f=0.25"],
        ["cast/*", "gemm/*"],
    ),
}


@pytest.mark.parametrize("mutant", list(MUTANTS), ids=lambda m: m.name)
def test_suite_catches_mutant(mutant):
    must_fail, must_pass = MUTANTS[mutant]
    report = run_suite(mutant(), profile="quick", progress=False, fingerprint=False)
    verdicts = {r.id: r.result.verdict for r in report.records}
    assert not report.ok
    for pattern in must_fail:
        hits = fnmatch.filter(verdicts, pattern)
        assert hits, f"pattern {pattern!r} matches no case"
        failed = [i for i in hits if verdicts[i] is Verdict.FAILED]
        assert failed, f"{mutant.name}: no case matching {pattern!r} failed"
    for pattern in must_pass:
        hits = fnmatch.filter(verdicts, pattern)
        assert hits, f"pattern {pattern!r} matches no case"
        wrong = [i for i in hits if verdicts[i] is not Verdict.PASSED]
        assert not wrong, f"{mutant.name}: cases the defect cannot affect failed: {wrong[:3]}"
    # Every failure names its case and says what differs.
    for rec in report.failed:
        assert rec.result.detail


@pytest.mark.parametrize("name", ["reference", "cpu"])
def test_builtin_backends_pass_quick_profile(name):
    report = run_suite(name, profile="quick", progress=False)
    failures = [(r.id, r.result.detail) for r in report.failed]
    assert report.ok, failures[:5]
    counts = report.counts()
    assert counts["passed"] > 500
    assert counts["not supported"] == 0  # both declare everything


def test_fast_accumulator_modelled_on_the_reference_passes_its_own_cases():
    """The reference emulating Hopper's fast accumulator: fast_accum cases run (and pass)
    under that model's bound, and are visibly less exact than the exact default."""
    backend = ReferenceBackend(fast_accumulator=HOPPER_FAST_ACCUMULATOR)
    report = run_suite(backend, profile="quick", progress=False, fingerprint=False, select="gemm/*")
    assert report.ok, [(r.id, r.result.detail) for r in report.failed][:3]
    by_id = {r.id: r.result for r in report.records}
    fast = [i for i in by_id if "/fast-accum/" in i]
    assert len(fast) >= 10 and all(by_id[i].verdict is Verdict.PASSED for i in fast)
    case = "gemm/e4m3fnxe4m3fn/tensorwisextensorwise/32x2048x32/nn/out=float32/"
    # 13 truncated bits over K = 2048 against the exact sum rounded once to fp32 (2**-24).
    assert by_id[case + "fast-accum/randn"].extra["rel_err"] > 2.0**-16
    assert by_id[case + "randn"].extra["rel_err"] < 2.0**-22
