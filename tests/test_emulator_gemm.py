"""The reference scaled GEMM against float64 of the dequantised inputs, and the accumulator
models against their error bounds.

Yardstick. ``E = A @ B (+ bias) (+ C_in)`` in float64, with ``A``, ``B`` the dequantised
operands (FP8 value times fp32(1/scale), exact in float64: at most 4 + 24 significant bits).
``E`` itself is not exact: each product of two such values (up to 56 bits) and each of the
K additions rounds at float64's unit roundoff ``2**-53``, so by the summation bound
(Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., section 4.2)
``|E - E_true| <= gamma_{K+2}(2**-53) * S`` with ``S = sum |a||b| + |bias| + |C_in|``.
The emulator's exact mode carries the same kind of float64 error, so two such terms make up
``slack`` below; it is ~1e-13 relative to S and never decides a test.

Exact mode promises one rounding to the output: ``|C - E| <= u_out |E| + slack + tiny`` for
fp32 output (u_out = 2**-24); bf16/fp16 outputs are reached via fp32, so a second rounding
of at most ``2**-24 |E|`` is added. ``tiny`` is half the smallest subnormal of the output.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from portable_fp8.backends.nvidia import DEEPGEMM_PROMOTED_ACCUMULATOR, HOPPER_FAST_ACCUMULATOR

import portable_fp8 as fp8
from portable_fp8.numerics.cast import as_fp8_tensor, codes_to_float, round_to_codes
from portable_fp8.numerics.formats import FORMATS
from portable_fp8.numerics.gemm import (
    FP32_ACCUMULATOR,
    AccumulatorModel,
    _round_significand_,
    abs_product_sum,
    gemm_error_bound,
    reference_scaled_mm,
    unit_roundoff,
)
from portable_fp8.numerics.granularity import TENSORWISE
from portable_fp8.numerics.tensor import Fp8Tensor

PAIRS = [
    ("tensorwise", "tensorwise"),
    ("rowwise", "columnwise"),
    ("block_1x128", "block_128x128"),
    ("mx_1x32", "mx_32x1"),
]
OUT_DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _gamma(n: int, u: float) -> float:
    return n * u / (1 - n * u)


def _operands(m, k, n, pair, formats=("e4m3fn", "e4m3fn"), seed=0, positive=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    w = torch.randn(k, n, generator=g)
    # Rows/columns of different magnitudes so per-block scales differ.
    # (Within 2**+-4, so that fp16 outputs of K <= 300 stay far below 65504.)
    x = x * torch.exp2(torch.randint(-4, 5, (m, 1), generator=g).float())
    w = w * torch.exp2(torch.randint(-4, 5, (1, n), generator=g).float())
    if positive:
        x, w = x.abs(), w.abs()
    a = fp8.quantize(x, formats[0], granularity=pair[0], backend="reference")
    b = fp8.quantize(w, formats[1], granularity=pair[1], backend="reference")
    return a, b


def _dequant64(t: Fp8Tensor) -> torch.Tensor:
    return codes_to_float(t.data.view(torch.uint8), t.format).double() * (
        t.expanded_scale_inv().double()
    )


def _run(a, b, *, out_dtype=torch.float32, bias=None, c=None, accumulator=None):
    return reference_scaled_mm(
        a.data, b.data, a.format, b.format, a.scale, b.scale, a.granularity, b.granularity,
        out_dtype=out_dtype, bias=bias, c=c, accumulator=accumulator,
    )  # fmt: skip


def _exact(a, b, bias=None, c=None):
    A, B = _dequant64(a), _dequant64(b)
    e = A @ B
    s = A.abs() @ B.abs()
    addends = torch.zeros_like(e)
    if bias is not None:
        e, addends = e + bias.double(), addends + bias.double().abs()
    if c is not None:
        e, addends = e + c.double(), addends + c.double().abs()
    return e, s, addends


@pytest.mark.parametrize("out_dtype", OUT_DTYPES, ids=str)
@pytest.mark.parametrize("pair", PAIRS, ids="x".join)
@pytest.mark.parametrize("extras", ["none", "bias", "bias+c"])
def test_exact_mode_is_one_output_rounding(pair, out_dtype, extras):
    m, k, n = 37, 300, 45  # no multiple of 16, partial 128- and 32-blocks along K
    a, b = _operands(m, k, n, pair, seed=PAIRS.index(pair) * 10 + len(extras))  # deterministic
    g = torch.Generator().manual_seed(9)
    bias = torch.randn(n, generator=g) * 5 if extras != "none" else None
    c = torch.randn(m, n, generator=g).to(out_dtype) if extras == "bias+c" else None
    got = _run(a, b, out_dtype=out_dtype, bias=bias, c=c)
    assert got.dtype == out_dtype and got.shape == (m, n)
    e, s, addends = _exact(a, b, bias, c)
    err = (got.double() - e).abs()

    slack = 2 * _gamma(k + 2, 2.0**-53) * (s + addends)
    u_out = unit_roundoff(out_dtype)
    via_fp32 = 0.0 if out_dtype == torch.float32 else 2.0**-24 * (1 + u_out)
    tiny = torch.finfo(out_dtype).smallest_normal * torch.finfo(out_dtype).eps / 2
    one_rounding = (u_out + via_fp32) * e.abs() + slack + tiny
    assert (err <= one_rounding).all(), (err - one_rounding).max()

    # And within the library's own bound for an exact accumulator.
    bound = gemm_error_bound(
        abs_product_sum(
            a.data, b.data, a.format, b.format, a.scale, b.scale, a.granularity, b.granularity
        ),
        k, accumulator=None, out_dtype=out_dtype, exact=e, addends=addends,
    )  # fmt: skip
    assert (err <= bound).all()


@pytest.mark.parametrize("pair", PAIRS, ids="x".join)
def test_abs_product_sum_is_sum_of_magnitudes(pair):
    a, b = _operands(20, 161, 33, pair, seed=4)
    got = abs_product_sum(
        a.data, b.data, a.format, b.format, a.scale, b.scale, a.granularity, b.granularity
    )
    _, s, _ = _exact(a, b)
    assert torch.allclose(got, s, rtol=2 * _gamma(161 + 2, 2.0**-53), atol=0)


def test_mixed_formats_and_through_the_op_api():
    a, b = _operands(19, 130, 21, ("rowwise", "columnwise"), formats=("e4m3fn", "e5m2"))
    e, _, _ = _exact(a, b)
    got = fp8.scaled_mm(a, b, out_dtype=torch.float32, backend="reference")
    assert ((got.double() - e).abs() <= 2.0**-24 * e.abs() + 1e-30).all()
    assert torch.equal(got, _run(a, b))


def test_transposed_operand_gives_the_transposed_product():
    x = torch.randn(33, 200, generator=torch.Generator().manual_seed(5))
    w = torch.randn(40, 200, generator=torch.Generator().manual_seed(6))
    xq = fp8.quantize(x, "e4m3fn", granularity="rowwise", backend="reference")
    wq = fp8.quantize(w, "e4m3fn", granularity="rowwise", backend="reference")
    y = fp8.scaled_mm(xq, wq.t(), out_dtype=torch.float32, backend="reference")
    yt = fp8.scaled_mm(wq, xq.t(), out_dtype=torch.float32, backend="reference")
    # Both are one rounding of the same exact sums (addition is exact in exact mode).
    e = _dequant64(xq) @ _dequant64(wq).t()
    assert ((y.double() - e).abs() <= 2.0**-24 * e.abs() + 1e-30).all()
    assert torch.equal(y, yt.t())


# -- narrow accumulators ----------------------------------------------------------------------


def _long_k(positive=True, k=4096):
    return _operands(16, k, 16, ("tensorwise", "tensorwise"), seed=21, positive=positive)


def test_unit_roundoff_of_models():
    assert AccumulatorModel(13, "nearest").unit_roundoff == 2.0**-14
    assert AccumulatorModel(13, "truncate").unit_roundoff == 2.0**-13
    assert FP32_ACCUMULATOR.unit_roundoff == 2.0**-24


@pytest.mark.parametrize(
    "model",
    [HOPPER_FAST_ACCUMULATOR, DEEPGEMM_PROMOTED_ACCUMULATOR, FP32_ACCUMULATOR,
     AccumulatorModel(10, "nearest", 4)],
    ids=["hopper", "deepgemm", "fp32", "p11-nearest-g4"],
)  # fmt: skip
def test_narrow_accumulator_within_its_bound(model):
    k = 4096
    a, b = _long_k(k=k)
    got = _run(a, b, accumulator=model)
    e, s, _ = _exact(a, b)
    bound = gemm_error_bound(s, k, accumulator=model, out_dtype=torch.float32, exact=e)
    err = (got.double() - e).abs()
    assert (err <= bound).all()
    # The model does something: its error is above what an exact sum rounded once could
    # have (2**-24 relative), for every model including the fp32 one.
    assert (err / e.abs()).max() > 2.0**-24


def test_hopper_model_error_is_measurably_larger_than_exact():
    a, b = _long_k(k=4096)
    e, _, _ = _exact(a, b)
    exact_rel = ((_run(a, b).double() - e).abs() / e.abs()).max().item()
    hopper_rel = ((_run(a, b, accumulator=HOPPER_FAST_ACCUMULATOR).double() - e).abs() / e).max()
    promoted = _run(a, b, accumulator=DEEPGEMM_PROMOTED_ACCUMULATOR).double()
    promoted_rel = ((promoted - e).abs() / e).max()
    assert exact_rel <= 2.0**-24 * (1 + 1e-9)
    # 128 truncating additions of a 14-bit accumulator: relative error of order 128 * 2**-14
    # (all addends positive, so truncation errors do not cancel); at least 2**-13 measured.
    assert hopper_rel > 2.0**-13
    assert hopper_rel > 1000 * exact_rel
    # Promotion to fp32 every 128 elements (DeepGEMM) removes most of it.
    assert promoted_rel < hopper_rel / 4


def test_truncation_and_nearest_differ_as_expected():
    a, b = _long_k(k=2048)
    e, _, _ = _exact(a, b)
    trunc = _run(a, b, accumulator=AccumulatorModel(13, "truncate", 32)).double()
    near = _run(a, b, accumulator=AccumulatorModel(13, "nearest", 32)).double()
    assert not torch.equal(trunc, near)
    # Positive addends: truncation toward zero never rounds a partial sum up, so the result
    # is below the exact sum everywhere (output rounding to fp32 is monotone).
    assert (trunc <= e).all() and (trunc < e).any()
    # Nearest errs both ways and much less on average than truncation.
    assert (near > e).any() and (near < e).any()
    assert (near - e).abs().mean() < (trunc - e).abs().mean() / 2


def _single_row(values, fmt_name="e5m2"):
    """A 1 x K Fp8Tensor of the given exactly representable values, and a K x 1 of ones."""
    fmt = FORMATS[fmt_name]
    y = torch.tensor(values, dtype=torch.float32).reshape(1, -1)
    codes = round_to_codes(y, fmt)
    assert torch.equal(codes_to_float(codes, fmt), y)  # representable
    one = torch.ones((), dtype=torch.float32)
    a = Fp8Tensor(as_fp8_tensor(codes, fmt), one, fmt, TENSORWISE)
    ones = round_to_codes(torch.ones(len(values), 1), fmt)
    b = Fp8Tensor(as_fp8_tensor(ones, fmt), one, fmt, TENSORWISE)
    return a, b


def test_narrow_sum_hand_example():
    """14 significant bits (mantissa_bits=13): 1 + 2**-14 is not representable."""
    a, b = _single_row([1.0, 2.0**-14, 2.0**-14])
    exact = 1.0 + 2.0**-13
    assert _run(a, b).item() == exact
    # One product per addition: 1 + 2**-14 is a tie between 1 and 1 + 2**-13 -> even (1),
    # twice; truncation drops it too.
    assert _run(a, b, accumulator=AccumulatorModel(13, "nearest", 1)).item() == 1.0
    assert _run(a, b, accumulator=AccumulatorModel(13, "truncate", 1)).item() == 1.0
    # Three products summed exactly per addition (a tensor-core dot): no loss.
    assert _run(a, b, accumulator=AccumulatorModel(13, "nearest", 3)).item() == exact
    # 1 + 1.5 * 2**-14 = 1 + 0.75 ulp: nearest rounds up, truncation down.
    a, b = _single_row([1.0, 1.5 * 2.0**-14])
    assert _run(a, b, accumulator=AccumulatorModel(13, "nearest", 1)).item() == exact
    assert _run(a, b, accumulator=AccumulatorModel(13, "truncate", 1)).item() == 1.0


def test_promotion_interval_resets_the_narrow_partial_sum():
    """Pairs (1, 2**-13), 128 times, in a 14-significant-bit accumulator rounding to nearest.

    Without promotion: 1 + 2**-13 is representable, but adding the next 1 gives 2 + 2**-13,
    a tie between 2 and 2 + 2**-12 (ulp 2**-12 from 2 on) that rounds to the even 2; from
    then on every 2**-13 is such a tie and is lost: 128.
    Promoting every 2 elements: each pair sums exactly to 1 + 2**-13 and joins an fp32
    accumulator exactly: 128 + 128 * 2**-13, the exact sum.
    """
    a, b = _single_row([1.0, 2.0**-13] * 128)
    plain = _run(a, b, accumulator=AccumulatorModel(13, "nearest", 1)).item()
    promoted = _run(a, b, accumulator=AccumulatorModel(13, "nearest", 1, promote_every=2)).item()
    assert plain == 128.0
    assert promoted == 128.0 + 128 * 2.0**-13 == _run(a, b).item()


def test_bound_derivation_terms():
    s = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    e = torch.tensor([[0.5, 0.0]], dtype=torch.float64)
    k = 100
    got = gemm_error_bound(s, k, accumulator=FP32_ACCUMULATOR, out_dtype=torch.float32, exact=e)
    u = 2.0**-24
    gamma = (k + 4) * u / (1 - (k + 4) * u)
    tiny = torch.finfo(torch.float32).smallest_normal * torch.finfo(torch.float32).eps
    assert math.isclose(got[0, 0].item(), gamma + u * 0.5 * (1 + gamma) + tiny, rel_tol=1e-12)
    assert got[0, 1].item() == tiny
    # bf16 output: two output roundings (via fp32) at bf16's unit roundoff 2**-8.
    got16 = gemm_error_bound(s, k, accumulator=None, out_dtype=torch.bfloat16, exact=e)
    tiny16 = torch.finfo(torch.bfloat16).smallest_normal * torch.finfo(torch.bfloat16).eps
    assert math.isclose(
        got16[0, 0].item(), gamma + 2 * 2.0**-8 * 0.5 * (1 + gamma) + tiny16, rel_tol=1e-12
    )
    # A model too narrow for K: gamma is infinite, the bound says nothing.
    wide = gemm_error_bound(s, 10**6, accumulator=HOPPER_FAST_ACCUMULATOR,
                            out_dtype=torch.float32, exact=e)  # fmt: skip
    assert math.isinf(wide[0, 0].item())


@pytest.mark.parametrize("k", [100, 128, 256, 300, 129])
def test_bound_with_promotion_terms(k):
    """The promoted-accumulator factor is the docstring's formula, exactly: with B = 128
    products per narrow block (u = 2**-13, 14-bit truncation) it is
    gamma_B(u) + gamma_{ceil(K/B)+4}(2**-24) (1 + gamma_B(u)) once K > B, and gamma_{K+4}(u)
    for K <= B (a single block is plain narrow accumulation). K = 256 is a multiple of B,
    where ceil(K/B) = K/B."""
    model = DEEPGEMM_PROMOTED_ACCUMULATOR
    s = torch.tensor([[1.0]], dtype=torch.float64)
    e = torch.zeros(1, 1, dtype=torch.float64)
    got = gemm_error_bound(s, k, accumulator=model, out_dtype=torch.float32, exact=e)

    def gamma(n, u):
        return n * u / (1 - n * u)

    u, b = 2.0**-13, 128
    assert model.unit_roundoff == u and model.promote_every == b
    if k > b:
        want = gamma(b, u) + gamma(math.ceil(k / b) + 4, 2.0**-24) * (1 + gamma(b, u))
    else:
        want = gamma(k + 4, u)
    tiny = torch.finfo(torch.float32).smallest_normal * torch.finfo(torch.float32).eps
    # rel_tol: both sides evaluate the same few float64 operations, in a different order
    assert math.isclose(got.item(), want + tiny, rel_tol=1e-12)


def test_bound_is_infinite_from_n_u_equal_to_one():
    """gamma_n is infinite once n u >= 1, the equality included: K + 4 = 2**13 terms at
    u = 2**-13 (a 14-bit truncating accumulator without promotion) give an infinite bound."""
    narrow = AccumulatorModel(13, "truncate", 32)
    assert narrow.unit_roundoff == 2.0**-13
    s = e = torch.ones(1, 1, dtype=torch.float64)  # exact = 0 would give inf * 0 = NaN
    got = gemm_error_bound(s, 2**13 - 4, accumulator=narrow, out_dtype=torch.float32, exact=e)
    assert math.isinf(got.item())


def test_e4m3_exact_sum_holds_for_large_k():
    """Products of E4M3FN codes are multiples of 2**-18 below 2**18: float64 sums stay exact.

    448 * 448 * K with K = 2**12 is exact; the emulator must return fp32 of the true sum.
    """
    k = 4096
    a, b = _single_row([448.0] * (k - 1) + [2.0**-9], "e4m3fn")
    b = Fp8Tensor(
        as_fp8_tensor(round_to_codes(torch.full((k, 1), 448.0), FORMATS["e4m3fn"]),
                      FORMATS["e4m3fn"]),
        b.scale, b.format, b.granularity,
    )  # fmt: skip
    true = (k - 1) * 448.0 * 448.0 + 448.0 * 2.0**-9
    assert _run(a, b).item() == np.float32(true)


def _oracle_narrow_sum(a: np.ndarray, b: np.ndarray, mantissa_bits, rounding, group):
    """The accumulator model written plainly in numpy float64: after each group of products
    (summed in float64: exact for these operands) is added, round the partial sum's
    significand (np.frexp) to mantissa_bits + 1 bits, half to even or toward zero."""
    acc = np.zeros((a.shape[0], b.shape[1]))
    p = mantissa_bits + 1
    for lo in range(0, a.shape[1], group):
        acc = acc + a[:, lo : lo + group] @ b[lo : lo + group, :]
        mant, exp = np.frexp(acc)
        scaled = mant * 2.0**p
        scaled = np.trunc(scaled) if rounding == "truncate" else np.round(scaled)
        acc = np.ldexp(scaled, exp - p)
    return acc


_MODELS = [
    (13, "truncate", 32), (13, "nearest", 1), (23, "nearest", 1), (10, "nearest", 4),
    (0, "nearest", 1), (0, "truncate", 3), (3, "truncate", 2), (52, "nearest", 1),
]  # fmt: skip


# Group sums must be exact in float64 for the two implementations to agree bit for bit
# whatever their summation order: E4M3 x E4M3 products span 2**-18 .. 2**17.6 (36 bits),
# E5M2 x E4M3 ones 2**-25 .. 2**24.6 (50 bits), so E5M2 is paired with groups of <= 4 only.
@pytest.mark.parametrize(
    ("formats", "model"),
    [(("e4m3fn", "e4m3fn"), m) for m in _MODELS]
    + [(("e5m2", "e4m3fn"), m) for m in _MODELS if m[2] <= 4],
    ids=str,
)
def test_narrow_sum_matches_a_plain_model(formats, model):
    mantissa_bits, rounding, group = model
    g = torch.Generator().manual_seed(mantissa_bits * 7 + group)
    codes_a = torch.randint(0, 256, (9, 301), generator=g).to(torch.uint8)
    codes_b = torch.randint(0, 256, (301, 7), generator=g).to(torch.uint8)
    fa, fb = FORMATS[formats[0]], FORMATS[formats[1]]
    # Finite codes only (NaN/inf codes replaced by zero).
    va = torch.nan_to_num(codes_to_float(codes_a, fa), nan=0.0, posinf=0.0, neginf=0.0)
    vb = torch.nan_to_num(codes_to_float(codes_b, fb), nan=0.0, posinf=0.0, neginf=0.0)
    one = torch.ones((), dtype=torch.float32)
    a = Fp8Tensor(as_fp8_tensor(round_to_codes(va, fa), fa), one, fa, TENSORWISE)
    b = Fp8Tensor(as_fp8_tensor(round_to_codes(vb, fb), fb), one, fb, TENSORWISE)
    got = _run(a, b, accumulator=AccumulatorModel(mantissa_bits, rounding, group))
    expected = _oracle_narrow_sum(va.double().numpy(), vb.double().numpy(), *model)
    assert np.array_equal(got.numpy(), expected.astype(np.float32))


def test_bound_adds_the_addends_to_the_product_magnitudes():
    """With bias/C addends the bound scales gamma by sum|a||b| + |addends| (a sum: each
    addend is one more term of the accumulated sum), exactly."""
    s = torch.tensor([[3.0]], dtype=torch.float64)
    add = torch.tensor([[5.0]], dtype=torch.float64)
    e = torch.zeros(1, 1, dtype=torch.float64)
    got = gemm_error_bound(s, 64, accumulator=None, out_dtype=torch.float32, exact=e, addends=add)
    u = 2.0**-24
    gamma = 68 * u / (1 - 68 * u)  # gamma_{K+4}(u) for K = 64
    tiny = torch.finfo(torch.float32).smallest_normal * torch.finfo(torch.float32).eps
    assert math.isclose(got.item(), gamma * (3.0 + 5.0) + tiny, rel_tol=1e-12)


def test_accumulator_model_is_a_frozen_hashable_value():
    """Capabilities are frozen and cached by value: their accumulator model must be too."""
    import dataclasses

    model = AccumulatorModel(13, "truncate", 1)
    assert hash(model) == hash(AccumulatorModel(13, "truncate", 1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.mantissa_bits = 10  # type: ignore[misc]


def test_unit_roundoff_compares_the_rounding_by_value():
    """A rounding name built at run time (read from a report, say) is the same rounding."""
    nearest = "".join(["near", "est"])
    assert AccumulatorModel(10, nearest).unit_roundoff == 2.0**-11
    assert AccumulatorModel(10, "".join(["trun", "cate"])).unit_roundoff == 2.0**-10


@pytest.mark.parametrize("rounding", ["nearest", "truncate"])
def test_two_bit_accumulator_rounds_to_two_significant_bits(rounding):
    """mantissa_bits = 1 keeps two significant bits (the bit-pattern path), checked against
    rounding the scaled significand in float64: m = frexp mantissa in [0.5, 1), 2 bits are
    round(m * 4) / 4 (ties to even) or trunc(m * 4) / 4."""
    x = torch.tensor([1.0, 1.25, 1.375, 1.5, 1.625, 1.75, 1.875, -1.375, 3.3, 0.7, 100.0],
                     dtype=torch.float64)  # fmt: skip
    model = AccumulatorModel(1, rounding)
    got = _round_significand_(x.clone(), model)
    m, e = np.frexp(x.numpy())
    r = np.round(m * 4) if rounding == "nearest" else np.trunc(m * 4)
    want = np.ldexp(r / 4, e)
    assert np.array_equal(got.numpy(), want), (got, want)


def test_global_scales_divide_the_exact_sum_before_bias():
    """Two-level scaling (NVFP4-style per-tensor second scales): the exact float64 sum is
    multiplied by fp32(1 / g_a) * fp32(1 / g_b) before the bias is added. With g = 2 and 8
    (powers of two, so fp32(1 / g) is exact) the float64 reference is exact up to one
    float64 rounding per factor, below fp32's output rounding: the fp32 results agree
    exactly. Kills the mutant that skips the global scales (mutation sitting 3)."""
    a, b = _operands(8, 64, 16, ("tensorwise", "tensorwise"), seed=11)
    bias = torch.linspace(-1, 1, 16)
    got = reference_scaled_mm(
        a.data, b.data, a.format, b.format, a.scale, b.scale, a.granularity, b.granularity,
        bias=bias, a_global_scale=torch.tensor(2.0), b_global_scale=torch.tensor(8.0),
    )  # fmt: skip
    e, _, _ = _exact(a, b)
    want = (e / 16 + bias.double()).float()
    assert torch.equal(got, want)
