"""The ``cuda`` and ``triton`` backends on a real GPU (skipped where there is none).

Casts must be bit-identical to the reference emulator (any NaN code where it gives NaN);
GEMMs must lie within :func:`gemm_error_bound` for the accumulator the backend declares.
"""

from __future__ import annotations

import pytest
import torch

import portable_fp8 as fp8
from portable_fp8.dispatch.registry import list_backends, unavailable_reason
from portable_fp8.numerics.cast import codes_of, round_to_codes
from portable_fp8.numerics.formats import FORMATS, element_formats
from portable_fp8.numerics.gemm import abs_product_sum, gemm_error_bound, reference_scaled_mm
from portable_fp8.numerics.tensor import Fp8Tensor

BACKENDS = ("cuda", "triton")


def _skip_reason() -> str | None:
    backends = list_backends()
    for name in BACKENDS:
        if name not in backends:
            return f"backend {name} not registered"
        reason = unavailable_reason(backends[name])
        if reason is not None or "cuda" not in backends[name].capabilities.devices:
            return f"{name}: {reason or 'not on CUDA'}"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


def _same_codes(got: torch.Tensor, want: torch.Tensor, fmt) -> torch.Tensor:
    """Elementwise: equal codes, or both NaN codes (the contract treats NaN codes alike)."""
    got, want = codes_of(got).cpu(), codes_of(want).cpu()
    values = fmt.code_values
    both_nan = values[got.long()].isnan() & values[want.long()].isnan()
    return (got == want) | both_nan


def _all_16bit(dtype: torch.dtype) -> torch.Tensor:
    return torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("saturate", [True, False])
@pytest.mark.parametrize("fmt", [f.name for f in element_formats()])
def test_every_bf16_and_fp16_pattern_bit_exact(backend, fmt, saturate):
    f = FORMATS[fmt]
    for dtype, scale in ((torch.bfloat16, 1.0), (torch.bfloat16, 2.0**120), (torch.float16, 3.0)):
        x = _all_16bit(dtype)
        got = fp8.cast_to_fp8(x.cuda(), fmt, scale, saturate=saturate, backend=backend)
        want = round_to_codes(x.float() * scale, f, saturate=saturate)
        assert bool(_same_codes(got, want, f).all()), (fmt, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp32_edges_and_random_bits_bit_exact(backend):
    gen = torch.Generator().manual_seed(1)
    bits = torch.randint(-(2**31), 2**31, (1 << 20,), dtype=torch.int64, generator=gen)
    x = bits.to(torch.int32).view(torch.float32)
    edges = torch.tensor(
        [
            0.0,
            -0.0,
            float("inf"),
            -float("inf"),
            float("nan"),
            448.0,
            464.0,
            464.01,
            2**-9,
            2**-10,
            1.5 * 2**-10,
            3 * 2**-11,
            57344.0,
            61440.0,
            2**-16,
            2**-17,
            240.0,
            248.0,
        ],
    )
    x = torch.cat([x, edges, -edges])
    for f in element_formats():
        for saturate in (True, False):
            got = fp8.cast_to_fp8(x.cuda(), f.name, saturate=saturate, backend=backend)
            want = round_to_codes(x, f, saturate=saturate)
            assert bool(_same_codes(got, want, f).all()), (f.name, saturate)


@pytest.mark.parametrize("backend", BACKENDS)
def test_stochastic_rounding_with_bits_bit_exact(backend):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4096, generator=gen) * 100
    words = torch.randint(-(2**31), 2**31, x.shape, dtype=torch.int32, generator=gen)
    for f in (FORMATS["e4m3fn"], FORMATS["e5m2"]):
        got = fp8.cast_to_fp8(
            x.cuda(), f.name, 0.5, rounding="stochastic", rand_bits=words.cuda(), backend=backend
        )
        want = round_to_codes(x * 0.5, f, rand_bits=words)
        assert bool(_same_codes(got, want, f).all())


def _view(x: torch.Tensor, layout: str) -> torch.Tensor:
    """``x`` (on the GPU) as a contiguous, transposed or every-other-column view."""
    if layout == "transposed":
        return x.t().contiguous().t()
    if layout == "strided":
        wide = torch.zeros(x.shape[0], 2 * x.shape[1], dtype=x.dtype, device=x.device)
        wide[:, ::2] = x
        return wide[:, ::2]
    return x


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cast_of_2d_views_bit_exact(backend, layout, dtype):
    """Random bit patterns (NaN, inf, subnormals included) cast from views of every layout,
    saturating and not, tensorwise and with a scale per row: the codes of the contiguous
    copy, bit for bit (a layout once changed ~9% of the non-saturating codes)."""
    gen = torch.Generator().manual_seed(11)
    bits = torch.randint(-(2**31), 2**31 - 1, (256, 384), generator=gen, dtype=torch.int64)
    x = bits.to(torch.int32).view(torch.float32).to(dtype)
    xv = _view(x.cuda(), layout)
    bits_of = torch.int32 if dtype == torch.float32 else torch.int16
    assert torch.equal(xv.cpu().view(bits_of), x.view(bits_of))
    assert (layout == "contiguous") == xv.is_contiguous()
    # Finite values over the whole range, for the per-row scales (computed from each row).
    y = torch.randn(256, 384, generator=gen) * torch.pow(
        2.0, torch.randint(-20, 20, (256, 1), generator=gen)
    )
    y = y.to(dtype)
    yv = _view(y.cuda(), layout)
    for f in (FORMATS["e4m3fn"], FORMATS["e5m2"]):
        for saturate in (True, False):
            got = fp8.cast_to_fp8(xv, f.name, 0.25, saturate=saturate, backend=backend)
            want = round_to_codes(x.float() * 0.25, f, saturate=saturate)
            assert bool(_same_codes(got, want, f).all()), (f.name, saturate, "tensorwise")
            kw = {"granularity": "rowwise", "saturate": saturate}
            got = fp8.quantize(yv, f.name, backend=backend, **kw)
            want = fp8.quantize(y, f.name, backend="reference", **kw)
            assert torch.equal(got.scale.cpu(), want.scale)
            assert bool(_same_codes(got.data, want.data, f).all()), (f.name, saturate, "rowwise")


@pytest.mark.parametrize("backend", BACKENDS)
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
def test_quantize_matches_reference(backend, gran):
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(300, 260, generator=gen) * 7).to(torch.bfloat16)
    got = fp8.quantize(x.cuda(), "e4m3fn", granularity=gran, backend=backend)
    want = fp8.quantize(x, "e4m3fn", granularity=gran, backend="reference")
    assert torch.equal(got.scale.cpu(), want.scale)
    assert bool(_same_codes(got.data, want.data, FORMATS["e4m3fn"]).all())
    back = fp8.dequantize(got, torch.bfloat16, backend=backend).cpu()
    assert torch.equal(back, fp8.dequantize(want, torch.bfloat16, backend="reference"))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "pair",
    [("tensorwise", "tensorwise"), ("rowwise", "columnwise"), ("block_1x128", "block_128x128")],
)
@pytest.mark.parametrize("shape", [(64, 256, 128), (33, 200, 50), (128, 1024, 384)])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_gemm_within_declared_bound(backend, pair, shape, out_dtype):
    m, k, n = shape
    gen = torch.Generator().manual_seed(m * k + n)
    a = torch.randn(m, k, generator=gen)
    b = torch.randn(k, n, generator=gen)
    bias = torch.randn(n, generator=gen)
    c = torch.randn(m, n, generator=gen)
    qa = fp8.quantize(a.cuda(), "e4m3fn", granularity=pair[0], backend=backend)
    qb = fp8.quantize(b.cuda(), "e4m3fn", granularity=pair[1], backend=backend)
    got = fp8.scaled_mm(qa, qb, out_dtype=out_dtype, bias=bias.cuda(), c=c.cuda(), backend=backend)
    fa, fb = qa.format, qb.format
    args = (
        qa.data.cpu(),
        qb.data.cpu(),
        fa,
        fb,
        qa.scale.cpu(),
        qb.scale.cpu(),
        qa.granularity,
        qb.granularity,
    )
    exact = reference_scaled_mm(*args, out_dtype=torch.float64, bias=bias, c=c)
    absum = abs_product_sum(*args)
    accumulator = list_backends()[backend].capabilities.accumulator
    bound = gemm_error_bound(
        absum,
        k,
        accumulator=accumulator,
        out_dtype=out_dtype,
        exact=exact,
        addends=bias.abs().double() + c.abs().double(),
    )
    err = (got.cpu().double() - exact).abs()
    assert bool((err <= bound).all()), float((err / bound).max())


@pytest.mark.parametrize("pair", [("tensorwise", "tensorwise"), ("rowwise", "columnwise")])
def test_fast_accum_is_cublaslt_fast_accumulation_within_its_bound(pair):
    """cuda with fast_accum=True: bit-identical to torch._scaled_mm(use_fast_accum=True) on
    the same codes and dequant scales, and within the declared fast accumulator's bound."""

    m, k, n = 256, 8192, 256  # large K: where the fast accumulator's error shows
    gen = torch.Generator().manual_seed(k)
    a, b = torch.rand(m, k, generator=gen), torch.rand(n, k, generator=gen)  # positive
    qa = fp8.quantize(a.cuda(), "e4m3fn", granularity=pair[0], backend="cuda")
    qbt = fp8.quantize(b.cuda(), "e4m3fn", granularity=pair[0], backend="cuda")
    qb = Fp8Tensor(qbt.data.t(), qbt.scale.t(), qbt.format, qbt.granularity.transposed())
    got = fp8.scaled_mm(qa, qb, out_dtype=torch.float32, fast_accum=True, backend="cuda")
    precise = fp8.scaled_mm(qa, qb, out_dtype=torch.float32, backend="cuda")
    sa, sb = qa.scale_inv, qb.scale_inv
    if pair[0] == "rowwise":
        sa, sb = sa.reshape(m, 1), sb.reshape(1, n)
    raw = torch._scaled_mm(qa.data, qb.data, sa, sb, out_dtype=torch.float32, use_fast_accum=True)
    assert torch.equal(got, raw)
    args = (qa.data.cpu(), qb.data.cpu(), qa.format, qb.format, qa.scale.cpu(), qb.scale.cpu(),
            qa.granularity, qb.granularity)  # fmt: skip
    exact = reference_scaled_mm(*args, out_dtype=torch.float64)
    caps = list_backends()["cuda"].capabilities
    bound = gemm_error_bound(
        abs_product_sum(*args), k, accumulator=caps.fast_accumulator, out_dtype=torch.float32,
        exact=exact,
    )  # fmt: skip
    err = (got.cpu().double() - exact).abs()
    assert bool((err <= bound).all()), float((err / bound).max())
    # The flag changes the accumulation: without promotion the sum of 8192 positive
    # products loses more than with fp32 promotion every 128.
    fast_rel = float((err / exact.abs()).max())
    precise_rel = float(((precise.cpu().double() - exact).abs() / exact.abs()).max())
    print(f"{pair}: max relative error fast {fast_rel:.3g}, precise {precise_rel:.3g}")
    assert fast_rel > precise_rel


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", ["e4m3fn", "e5m2", "e4m3fnuz"])
@pytest.mark.parametrize("given_scale", [False, True])
def test_quantize_transpose_bit_exact(backend, fmt, given_scale):
    """Every bf16 pattern (NaN, inf, subnormals included) in a 256 x 256 tile, cast with the
    fused kernel: codes and transposed codes equal the emulator's, amax is max |x|."""
    f = FORMATS[fmt]
    x = _all_16bit(torch.bfloat16).reshape(256, 256)
    x = x[:, torch.randperm(256)].cuda()  # NaNs and infs spread over many tiles
    finite = x[x.isfinite()]
    x = torch.where(x.isfinite(), x, finite[0]) if not given_scale else x
    scale = torch.tensor(2.0**-3, device="cuda") if given_scale else None
    q, qt, amax = fp8.quantize_transpose(x, fmt, scale=scale, backend=backend)
    s = q.scale.cpu()
    want = round_to_codes(x.cpu().float() * s, f)
    assert bool(_same_codes(q.data, want, f).all())
    assert bool(_same_codes(qt.data, want.t().contiguous(), f).all())
    want_amax = x.float().abs().max().cpu()
    assert torch.equal(amax.cpu(), want_amax) or (amax.isnan() and want_amax.isnan())
    if not given_scale:
        assert torch.equal(s, fp8.quantize(x.cpu(), fmt, backend="reference").scale)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gemm_on_quantize_transpose_outputs(backend):
    """The codes, scales and transposed codes of quantize_transpose feed scaled_mm directly
    (cuBLASLt needs aligned scale pointers, which broke once); the result equals the GEMM of
    the same operands made by quantize."""
    gen = torch.Generator(device="cuda").manual_seed(3)
    x = torch.randn(256, 512, device="cuda", generator=gen, dtype=torch.bfloat16)
    w = torch.randn(384, 512, device="cuda", generator=gen, dtype=torch.bfloat16)
    qx, qx_t, _ = fp8.quantize_transpose(x, backend=backend)
    qw, qw_t, _ = fp8.quantize_transpose(w, backend=backend)
    got = fp8.scaled_mm(qx, qw.t(), out_dtype=torch.float32, backend=backend)
    want = fp8.scaled_mm(
        fp8.quantize(x, backend=backend),
        fp8.quantize(w, backend=backend).t(),
        out_dtype=torch.float32,
        backend=backend,
    )
    assert torch.equal(got, want)
    # The transposed codes as operands of the transposed product W x^T, judged like every
    # GEMM: within the declared accumulator's bound of the exact product.
    a, b = Fp8Tensor(qw_t.data.t(), qw.scale, qw.format, qw.granularity), qx_t
    got_t = fp8.scaled_mm(a, b, out_dtype=torch.float32, backend=backend)
    args = (a.data.cpu(), b.data.cpu(), a.format, b.format, a.scale.cpu(), b.scale.cpu(),
            a.granularity, b.granularity)  # fmt: skip
    exact = reference_scaled_mm(*args, out_dtype=torch.float64)
    bound = gemm_error_bound(
        abs_product_sum(*args),
        512,
        accumulator=list_backends()[backend].capabilities.accumulator,
        out_dtype=torch.float32,
        exact=exact,
    )
    assert bool(((got_t.cpu().double() - exact).abs() <= bound).all())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(64, 256), (256, 512), (100, 300)])
def test_quantize_transpose_every_dtype_and_shape(backend, dtype, shape):
    """The transposed codes equal the transpose of the codes for every input dtype and for
    shapes that do and do not fill the kernel's tiles (a tile shape once left fp32 inputs'
    transposed codes partly unwritten)."""
    gen = torch.Generator(device="cuda").manual_seed(shape[0])
    x = (torch.randn(shape, device="cuda", generator=gen) * 100).to(dtype)
    for fmt in ("e4m3fn", "e5m2"):
        q, qt, _ = fp8.quantize_transpose(x, fmt, backend=backend)
        want = fp8.quantize(x.cpu(), fmt, backend="reference")
        assert torch.equal(q.scale.cpu(), want.scale)
        assert bool(_same_codes(q.data, want.data, FORMATS[fmt]).all())
        assert bool(_same_codes(qt.data, want.data.t().contiguous(), FORMATS[fmt]).all())
