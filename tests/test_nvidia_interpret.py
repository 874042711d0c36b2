"""The ``triton`` backend's kernels in Triton's CPU interpreter, against the reference.

Runs where triton is installed and the process was started with ``TRITON_INTERPRET=1`` (the
interpreter must be on before triton is first imported; ``import portable_fp8`` imports it);
skips otherwise, saying why. Casts and quantisation must be bit-identical to the emulator
(any NaN code where it gives NaN); GEMMs must lie within :func:`gemm_error_bound` of the
exact result for the accumulator the backend declares.
"""

from __future__ import annotations

import pytest
import torch

import portable_fp8 as fp8
from portable_fp8.dispatch.registry import list_backends, unavailable_reason
from portable_fp8.numerics.cast import codes_of, round_to_codes
from portable_fp8.numerics.formats import E4M3FN, FORMATS, element_formats
from portable_fp8.numerics.gemm import abs_product_sum, gemm_error_bound, reference_scaled_mm
from portable_fp8.numerics.granularity import TENSORWISE


def _skip_reason() -> str | None:
    backend = list_backends().get("triton")
    if backend is None:
        return "backend triton not registered"
    reason = unavailable_reason(backend)
    if reason is None and "cpu" not in backend.capabilities.devices:
        reason = "the triton backend is not in interpreter mode"
    if reason is not None:
        reason += " (run with TRITON_INTERPRET=1 in the environment to use the interpreter)"
    return reason


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=f"{_skip_reason()}")


def _same_codes(got, want, fmt) -> bool:
    got, want = codes_of(got), codes_of(want)
    values = fmt.code_values
    both_nan = values[got.long()].isnan() & values[want.long()].isnan()
    return bool(((got == want) | both_nan).all())


@pytest.mark.parametrize("saturate", [True, False])
@pytest.mark.parametrize("fmt", [f.name for f in element_formats()])
def test_every_bf16_pattern_bit_exact(fmt, saturate):
    x = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    # 2**120 brings bf16 subnormals into the FP8 range (the interpreter misreads them)
    for scale in (0.75, 2.0**120):
        got = fp8.cast_to_fp8(x, fmt, scale, saturate=saturate, backend="triton")
        want = round_to_codes(x.float() * scale, FORMATS[fmt], saturate=saturate)
        assert _same_codes(got, want, FORMATS[fmt]), scale


def test_fp32_random_patterns_and_stochastic_rounding_bit_exact():
    gen = torch.Generator().manual_seed(5)
    bits = torch.randint(-(2**31), 2**31, (1 << 14,), dtype=torch.int64, generator=gen)
    x = bits.to(torch.int32).view(torch.float32)
    words = torch.randint(-(2**31), 2**31, x.shape, dtype=torch.int32, generator=gen)
    for f in (FORMATS["e4m3fn"], FORMATS["e5m2"], FORMATS["e4m3fnuz"]):
        got = fp8.cast_to_fp8(x, f.name, backend="triton")
        assert _same_codes(got, round_to_codes(x, f), f)
        got = fp8.cast_to_fp8(x, f.name, rounding="stochastic", rand_bits=words, backend="triton")
        assert _same_codes(got, round_to_codes(x, f, rand_bits=words), f)


def test_seeded_stochastic_rounding_uses_the_stated_words():
    backend = list_backends()["triton"]
    x = torch.randn(37, 41) * 10
    scale = torch.tensor(0.5)
    words = backend.philox_words(x.shape, 1234, "cpu")
    got = backend.cast_to_fp8(
        x, E4M3FN, scale, TENSORWISE, saturate=True, rand_bits=None, seed=1234
    )
    assert _same_codes(got, round_to_codes(x * 0.5, E4M3FN, rand_bits=words), E4M3FN)
    # the words are not constant (a broken generator would make SR deterministic)
    assert words.unique().numel() > x.numel() // 2


def test_fused_amax_cast():
    backend = list_backends()["triton"]
    x = (torch.randn(33, 70) * 5).to(torch.bfloat16)
    x[3, 4] = -300.0
    scale = torch.tensor(1.5)
    codes, amax = backend.cast_with_amax(x, E4M3FN, scale)
    assert float(amax) == 300.0
    assert _same_codes(codes, round_to_codes(x.float() * 1.5, E4M3FN), E4M3FN)
    x[0, 0] = float("nan")
    assert backend.cast_with_amax(x, E4M3FN, scale)[1].isnan()


@pytest.mark.parametrize(
    "gran",
    [
        "tensorwise",
        "rowwise",
        "columnwise",
        "block_1x128",
        "block_128x128",
        "block_128x1",
        "mx_1x32",
    ],
)
def test_quantize_and_dequantize_match_reference(gran):
    gen = torch.Generator().manual_seed(6)
    x = (torch.randn(150, 260, generator=gen) * 7).to(torch.bfloat16)
    got = fp8.quantize(x, "e4m3fn", granularity=gran, margin=1, backend="triton")
    want = fp8.quantize(x, "e4m3fn", granularity=gran, margin=1, backend="reference")
    assert torch.equal(got.scale, want.scale)
    assert _same_codes(got.data, want.data, E4M3FN)
    for out_dtype in (torch.bfloat16, torch.float16):
        back = fp8.dequantize(got, out_dtype, backend="triton")
        assert torch.equal(back, fp8.dequantize(want, out_dtype, backend="reference"))


@pytest.mark.parametrize(
    "pair",
    [("tensorwise", "tensorwise"), ("rowwise", "columnwise"), ("block_1x128", "block_128x128")],
)
@pytest.mark.parametrize("shape", [(33, 200, 50), (40, 300, 17)])
@pytest.mark.parametrize("formats", [("e4m3fn", "e4m3fn"), ("e4m3fn", "e5m2")])
def test_gemm_within_declared_bound(pair, shape, formats):
    m, k, n = shape
    gen = torch.Generator().manual_seed(m + k + n)
    a, b = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)
    bias, c = torch.randn(n, generator=gen), torch.randn(m, n, generator=gen)
    qa = fp8.quantize(a, formats[0], granularity=pair[0], backend="triton")
    qb = fp8.quantize(b, formats[1], granularity=pair[1], backend="triton")
    for out_dtype in (torch.float32, torch.bfloat16):
        got = fp8.scaled_mm(qa, qb, out_dtype=out_dtype, bias=bias, c=c, backend="triton")
        args = (qa.data, qb.data, qa.format, qb.format, qa.scale, qb.scale)
        args += (qa.granularity, qb.granularity)
        exact = reference_scaled_mm(*args, out_dtype=torch.float64, bias=bias, c=c)
        accumulator = list_backends()["triton"].capabilities.accumulator
        bound = gemm_error_bound(
            abs_product_sum(*args),
            k,
            accumulator=accumulator,
            out_dtype=out_dtype,
            exact=exact,
            addends=bias.abs().double() + c.abs().double(),
        )
        err = (got.double() - exact).abs()
        assert bool((err <= bound).all()), float((err / bound).max())
