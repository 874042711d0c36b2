"""The ``cpu`` backend: casts bit-identical to ``reference``; GEMMs within the fp32 bound.

The cast comparison is exhaustive over bf16 and fp16 inputs for every format, both overflow
modes and three scales (1, a power of two, and 3.7, whose products are rounded in fp32);
NaN codes count as equal (the contract accepts any NaN code where the reference gives NaN).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import assert_same_codes

import portable_fp8 as fp8
from portable_fp8.dispatch.registry import get_backend
from portable_fp8.numerics.cast import codes_of
from portable_fp8.numerics.formats import FORMATS
from portable_fp8.numerics.gemm import FP32_ACCUMULATOR, abs_product_sum, gemm_error_bound

ALL_NAMES = sorted(FORMATS)
SCALES = [1.0, 2.0**-3, 3.7]


def _all_patterns(dtype: torch.dtype) -> torch.Tensor:
    return torch.arange(0, 2**16, dtype=torch.int32).to(torch.int16).view(dtype)


def _codes(x, name, scale, saturate, backend, **kw) -> np.ndarray:
    q = fp8.cast_to_fp8(x, name, scale, saturate=saturate, backend=backend, **kw)
    assert q.dtype == FORMATS[name].torch_dtype
    return codes_of(q).numpy()


def test_cpu_backend_declares_fp32_accumulation():
    caps = get_backend("cpu").capabilities
    assert caps.accumulator == FP32_ACCUMULATOR
    assert "cpu" in caps.devices and set(caps.cast_formats) == set(FORMATS)


@pytest.mark.parametrize("saturate", [True, False])
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", ALL_NAMES)
def test_cast_bit_identical_to_reference_on_all_16_bit_patterns(name, dtype, scale, saturate):
    x = _all_patterns(dtype)
    cpu = _codes(x, name, scale, saturate, "cpu")
    ref = _codes(x, name, scale, saturate, "reference")
    assert_same_codes(cpu, ref, FORMATS[name], f"{name} {dtype} scale={scale}", x.float())


@pytest.mark.parametrize("saturate", [True, False])
@pytest.mark.parametrize("name", ALL_NAMES)
def test_cast_bit_identical_on_random_fp32(name, saturate):
    rng = np.random.default_rng(5)
    bits = rng.integers(0, 2**32, size=1 << 16, dtype=np.uint64).astype(np.uint32)
    near = np.exp2(rng.uniform(-30, 20, 1 << 16)) * rng.choice([-1, 1], 1 << 16)
    x = torch.from_numpy(np.concatenate([bits.view(np.float32), near.astype(np.float32)]))
    for scale in SCALES:
        cpu = _codes(x, name, scale, saturate, "cpu")
        ref = _codes(x, name, scale, saturate, "reference")
        assert_same_codes(cpu, ref, FORMATS[name], f"{name} fp32 scale={scale}", x)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_stochastic_cast_bit_identical_with_explicit_bits(name):
    g = torch.Generator().manual_seed(8)
    x = torch.randn(1 << 14, generator=g) * 100
    bits = torch.randint(-(2**31), 2**31, x.shape, dtype=torch.int32, generator=g)
    kw = {"rounding": "stochastic", "rand_bits": bits}
    cpu = _codes(x, name, 1.0, True, "cpu", **kw)
    ref = _codes(x, name, 1.0, True, "reference", **kw)
    assert_same_codes(cpu, ref, FORMATS[name], f"{name} stochastic")


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", ALL_NAMES)
def test_dequantize_every_code_identical(name, out_dtype):
    fmt = FORMATS[name]
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    q = codes if fmt.torch_dtype == torch.uint8 else codes.view(fmt.torch_dtype)
    kw = {"format": name, "out_dtype": out_dtype}
    for scale in SCALES:
        cpu = fp8.cast_from_fp8(q, scale, backend="cpu", **kw)
        ref = fp8.cast_from_fp8(q, scale, backend="reference", **kw)
        assert cpu.dtype == ref.dtype == out_dtype
        # Codes the format can produce. Gaudi2's codes above 240 never come out of a cast;
        # the reference decodes them as NaN, the cpu backend (torch) as E4M3FN values, and
        # the contract does not define them, so they are left out here.
        producible = torch.ones(256, dtype=torch.bool)
        if name == "e4m3_gaudi2":
            magnitude = codes.to(torch.int32) & 0x7F
            producible = (magnitude <= 0x77) | (magnitude == 0x7F)  # up to 240, and NaN
        ref, cpu = ref[producible], cpu[producible]
        assert torch.equal(cpu.isnan(), ref.isnan())
        ok = ~ref.isnan()
        assert torch.equal(cpu[ok], ref[ok])
        # And the value: decoded code times fp32(1 / scale), rounded once to out_dtype.
        inv = np.float32(1.0) / np.float32(scale)
        table = fmt.code_values.numpy().astype(np.float32)[producible.numpy()]
        with np.errstate(over="ignore"):  # E8M0's 2**127 / 2**-3 overflows to inf, as it must
            expected = (table * inv)[ok.numpy()]
        assert torch.equal(ref[ok], torch.from_numpy(expected).to(out_dtype))


@pytest.mark.parametrize(
    "granularity", ["tensorwise", "rowwise", "columnwise", "block_1x128", "block_128x128",
                    "mx_1x32", "mx_32x1"],
)  # fmt: skip
@pytest.mark.parametrize("name", ["e4m3fn", "e5m2", "e4m3fnuz", "e4m3_gaudi2"])
def test_quantize_identical_to_reference(name, granularity):
    x = torch.randn(70, 300, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    x[3, 5] = 0
    cpu = fp8.quantize(x, name, granularity=granularity, backend="cpu")
    ref = fp8.quantize(x, name, granularity=granularity, backend="reference")
    assert torch.equal(cpu.scale, ref.scale)
    assert_same_codes(codes_of(cpu.data).numpy(), codes_of(ref.data).numpy(), FORMATS[name])


# -- GEMM -------------------------------------------------------------------------------------

PAIRS = [
    ("tensorwise", "tensorwise"),
    ("rowwise", "columnwise"),
    ("block_1x128", "block_128x128"),
    ("mx_1x32", "mx_32x1"),
]


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("formats", [("e4m3fn", "e4m3fn"), ("e5m2", "e4m3fn"),
                                     ("e4m3fnuz", "e4m3fnuz")], ids="x".join)  # fmt: skip
@pytest.mark.parametrize("pair", PAIRS, ids="x".join)
def test_gemm_within_fp32_accumulator_bound(pair, formats, out_dtype):
    """|C - E| <= gemm_error_bound(FP32_ACCUMULATOR): see portable_fp8/numerics/gemm.py.

    E is the float64 product of the dequantised operands (its own float64 error, about
    K * 2**-53 relative to sum |a||b|, is negligible against the fp32 bound's K * 2**-24).
    """
    m, k, n = 45, 520, 67
    g = torch.Generator().manual_seed(11)
    x = torch.randn(m, k, generator=g) * torch.exp2(torch.randint(-4, 5, (m, 1), generator=g))
    w = torch.randn(k, n, generator=g)
    a = fp8.quantize(x, formats[0], granularity=pair[0], backend="cpu")
    b = fp8.quantize(w, formats[1], granularity=pair[1], backend="cpu")
    bias = torch.randn(n, generator=g)
    c = torch.randn(m, n, generator=g).to(out_dtype)
    got = fp8.scaled_mm(a, b, out_dtype=out_dtype, bias=bias, c=c, backend="cpu")
    assert got.dtype == out_dtype and got.shape == (m, n)

    A = fp8.dequantize(a, backend="reference").double()
    B = fp8.dequantize(b, backend="reference").double()
    exact = A @ B + bias.double() + c.double()
    addends = bias.double().abs() + c.double().abs()
    s = abs_product_sum(
        a.data, b.data, a.format, b.format, a.scale, b.scale, a.granularity, b.granularity
    )
    bound = gemm_error_bound(
        s, k, accumulator=FP32_ACCUMULATOR, out_dtype=out_dtype, exact=exact, addends=addends
    )
    err = (got.double() - exact).abs()
    assert (err <= bound).all(), (err - bound).max()
    # And it agrees with the reference to within the same bound (both are near E).
    ref = fp8.scaled_mm(a, b, out_dtype=out_dtype, bias=bias, c=c, backend="reference")
    assert ((got.double() - ref.double()).abs() <= 2 * bound).all()


@pytest.mark.parametrize("pair", PAIRS, ids="x".join)
@pytest.mark.parametrize("mkn", [(0, 5, 3), (3, 0, 4), (3, 5, 0), (0, 0, 0)], ids=str)
def test_gemm_of_zero_size_operands(pair, mkn):
    m, k, n = mkn
    a = fp8.quantize(torch.randn(m, k), granularity=pair[0], backend="cpu")
    b = fp8.quantize(torch.randn(k, n), granularity=pair[1], backend="cpu")
    for backend in ("cpu", "reference"):
        out = fp8.scaled_mm(a, b, out_dtype=torch.float32, bias=torch.ones(n), backend=backend)
        assert out.shape == (m, n) and (out == 1).all()  # empty sum + bias


def test_gemm_zero_k_and_zero_operands():
    z = fp8.quantize(torch.zeros(8, 16), "e4m3fn", backend="cpu")
    assert z.scale.item() == 1.0  # amax 0 -> scale 1
    out = fp8.scaled_mm(z, z.t(), out_dtype=torch.float32, backend="cpu")
    assert torch.equal(out, torch.zeros(8, 8))


def test_gemm_propagates_nan_and_inf_inputs():
    x = torch.ones(4, 32)
    x[1, 3] = math.nan
    a = fp8.quantize(x, "e4m3fn", scale=1.0, backend="cpu")
    b = fp8.quantize(torch.ones(32, 5), "e4m3fn", scale=1.0, backend="cpu")
    for backend in ("cpu", "reference"):
        out = fp8.scaled_mm(a, b, out_dtype=torch.float32, backend=backend)
        assert out[1].isnan().all() and not out[[0, 2, 3]].isnan().any()
