"""The operator API: every documented validation error, the contract's special inputs, and
hypothesis fuzzing (no exception but the documented ones; reference and cpu bit-equal).

Documented exception types (portable_fp8/dispatch/ops.py): wrong types and dtypes raise
Fp8TypeError; wrong shapes, devices and values Fp8ValueError; unknown formats
UnknownFormatError; unknown backends UnknownBackendError; undeclared features
NotSupportedError. All derive from Fp8Error. A second device is faked with torch's "meta"
device (no data, but a distinct device).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from conftest import assert_same_codes
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import portable_fp8 as fp8
from portable_fp8.errors import (
    Fp8Error,
    Fp8TypeError,
    Fp8ValueError,
    NotSupportedError,
    UnknownFormatError,
)
from portable_fp8.numerics.cast import codes_of
from portable_fp8.numerics.formats import FORMATS, element_formats
from portable_fp8.numerics.gemm import FP32_ACCUMULATOR, abs_product_sum, gemm_error_bound
from portable_fp8.numerics.granularity import GRANULARITIES

X = torch.linspace(-10, 10, 64).reshape(4, 16)


def _q(x=X, fmt="e4m3fn", granularity="tensorwise", backend="reference", **kw):
    return fp8.quantize(x, fmt, granularity=granularity, backend=backend, **kw)


# -- validation -------------------------------------------------------------------------------

_CAST_ERRORS = [
    ({"x": [1.0, 2.0]}, Fp8TypeError, "must be a torch.Tensor"),
    ({"x": torch.ones(3, dtype=torch.float64)}, Fp8TypeError, "float32, bfloat16 or float16"),
    ({"x": torch.ones(3, dtype=torch.int32)}, Fp8TypeError, "torch.int32"),
    ({"x": torch.ones(3).to(torch.float8_e4m3fn)}, Fp8TypeError, "float8_e4m3fn"),
    ({"format": "e4m3"}, UnknownFormatError, "known formats: e4m3fn"),
    ({"format": torch.int8}, UnknownFormatError, "not an FP8 dtype"),
    ({"scale": "2"}, Fp8TypeError, "scale must be a float or a tensor"),
    ({"scale": True}, Fp8TypeError, "scale must be a float or a tensor"),
    ({"scale": torch.tensor([2])}, Fp8TypeError, "floating-point"),
    ({"scale": torch.ones(2)}, Fp8ValueError, "shape"),
    ({"scale": torch.ones((), device="meta")}, Fp8ValueError, "meta"),
    ({"rounding": "up"}, Fp8ValueError, "rounding must be one of"),
    ({"rand_bits": torch.zeros(4, dtype=torch.int32)}, Fp8ValueError, "stochastic"),
    ({"rounding": "stochastic", "rand_bits": torch.zeros(5, dtype=torch.int32)},
     Fp8ValueError, r"rand_bits has shape \(5,\)"),
    ({"rounding": "stochastic", "rand_bits": torch.zeros(4)}, Fp8TypeError, "int32"),
    ({"rounding": "stochastic", "rand_bits": [0, 0, 0, 0]}, Fp8TypeError, "rand_bits"),
    ({"rounding": "stochastic", "rand_bits": torch.zeros(4, dtype=torch.int32, device="meta")},
     Fp8ValueError, "meta"),
    ({"x": torch.ones(4, device="meta")}, NotSupportedError, "device 'meta'"),
]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "exc", "message"), _CAST_ERRORS)
def test_cast_to_fp8_validation(kwargs, exc, message):
    args = {"x": torch.ones(4), "format": "e4m3fn", **kwargs}
    with pytest.raises(exc, match=message) as info:
        fp8.cast_to_fp8(args.pop("x"), args.pop("format"), backend="reference", **args)
    assert isinstance(info.value, Fp8Error)


def test_cast_from_fp8_validation():
    q = fp8.cast_to_fp8(torch.ones(4), "e5m2", backend="reference")
    with pytest.raises(Fp8TypeError, match="q must be a torch.Tensor"):
        fp8.cast_from_fp8([1, 2])
    with pytest.raises(Fp8ValueError, match="uint8 codes need format="):
        fp8.cast_from_fp8(q.view(torch.uint8))
    with pytest.raises(Fp8TypeError, match="does not store e4m3fn"):
        fp8.cast_from_fp8(q, format="e4m3fn")
    with pytest.raises(UnknownFormatError, match="not an FP8 dtype"):
        fp8.cast_from_fp8(torch.ones(3))
    with pytest.raises(Fp8TypeError, match="out_dtype"):
        fp8.cast_from_fp8(q, out_dtype=torch.float64)
    with pytest.raises(Fp8ValueError, match="shape"):
        fp8.cast_from_fp8(q, torch.ones(4))
    # The right spellings work: dtype-implied format, uint8 codes with a format.
    a = fp8.cast_from_fp8(q, 1.0, backend="reference")
    b = fp8.cast_from_fp8(q.view(torch.uint8), format="e5m2", backend="reference")
    assert torch.equal(a, b) and torch.equal(a, torch.ones(4))


def test_quantize_validation():
    with pytest.raises(Fp8ValueError, match="unknown granularity 'block_7'.*tensorwise"):
        _q(granularity="block_7")
    with pytest.raises(Fp8ValueError, match="block-scale format"):
        _q(fmt="e8m0fnu")
    with pytest.raises(Fp8ValueError, match="at least 1 dimension"):
        _q(x=torch.tensor(1.0), granularity="rowwise")
    with pytest.raises(Fp8ValueError, match=r"shape \(4, 1\)"):
        _q(granularity="rowwise", scale=torch.ones(4))
    with pytest.raises(Fp8TypeError, match="float32, bfloat16 or float16"):
        _q(x=X.double())
    with pytest.raises(Fp8TypeError, match="Fp8Tensor"):
        fp8.dequantize(X)
    with pytest.raises(Fp8TypeError, match="out_dtype"):
        fp8.dequantize(_q(), torch.int8)


def test_scaled_mm_validation():
    a, b = _q(), _q(x=torch.ones(16, 8))
    with pytest.raises(Fp8TypeError, match="a must be an Fp8Tensor"):
        fp8.scaled_mm(X, b)
    with pytest.raises(Fp8ValueError, match="b must be 2-D"):
        fp8.scaled_mm(a, _q(x=torch.ones(2, 8, 8)))
    with pytest.raises(Fp8ValueError, match="inner dimensions differ: a is 4x16, b is 8x8"):
        fp8.scaled_mm(a, _q(x=torch.ones(8, 8)))
    with pytest.raises(Fp8TypeError, match="out_dtype"):
        fp8.scaled_mm(a, b, out_dtype=torch.int32)
    with pytest.raises(Fp8ValueError, match=r"bias must be a floating tensor of shape \(8,\)"):
        fp8.scaled_mm(a, b, bias=torch.ones(4))
    with pytest.raises(Fp8ValueError, match="bias"):
        fp8.scaled_mm(a, b, bias=torch.ones(8, dtype=torch.int64))
    with pytest.raises(Fp8ValueError, match=r"c must be a floating tensor of shape \(4, 8\)"):
        fp8.scaled_mm(a, b, c=torch.ones(8, 4))
    with pytest.raises(Fp8ValueError, match="different devices"):
        fp8.scaled_mm(a, b, bias=torch.ones(8, device="meta"), backend="reference")
    rowwise_b = _q(x=torch.ones(16, 8), granularity="rowwise")
    with pytest.raises(NotSupportedError, match="'reference'.*tensorwise x rowwise"):
        fp8.scaled_mm(a, rowwise_b, backend="reference")


@pytest.fixture
def patched_caps(clean_registry, monkeypatch):
    """Change what the cpu backend declares, for this test only (registry reloaded after)."""

    def patch(**changes):
        backend = fp8.get_backend("cpu")
        caps = dataclasses.replace(backend.capabilities, **changes)
        monkeypatch.setattr(backend, "capabilities", caps)

    return patch


def test_undeclared_features_raise_not_supported(patched_caps):
    patched_caps(
        non_saturating=False,
        rounding=frozenset({"nearest"}),
        gemm_dim_multiple=16,
        gemm_bias=False,
        out_dtypes=frozenset({torch.bfloat16}),
        cast_formats=frozenset({"e4m3fn"}),
        granularities=frozenset({"tensorwise"}),
    )
    x = torch.ones(4, 16)
    cases = [
        (lambda: fp8.cast_to_fp8(x, saturate=False, backend="cpu"), "non-saturating casts"),
        (lambda: fp8.cast_to_fp8(x, rounding="stochastic", backend="cpu"), "stochastic"),
        (lambda: fp8.cast_to_fp8(x, "e5m2", backend="cpu"), "casts to e5m2"),
        (lambda: _q(x, granularity="rowwise", backend="cpu"), "rowwise scaling"),
        (lambda: fp8.scaled_mm(_q(), _q(torch.ones(16, 8)), out_dtype=torch.float32,
                               backend="cpu"), "GEMM output torch.float32"),
        (lambda: fp8.scaled_mm(_q(), _q(torch.ones(16, 8)), bias=torch.ones(8),
                               backend="cpu"), "GEMM bias"),
    ]  # fmt: skip
    for call, feature in cases:
        with pytest.raises(NotSupportedError, match=f"backend 'cpu' does not support {feature}"):
            call()
    with pytest.raises(Fp8ValueError, match="multiples of 16; got K=20, N=8"):
        fp8.scaled_mm(_q(torch.ones(4, 20)), _q(torch.ones(20, 8)), backend="cpu")
    fp8.scaled_mm(_q(), _q(torch.ones(16, 16)), backend="cpu")  # K, N multiples of 16: fine


# -- the contract's special inputs -------------------------------------------------------------


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("granularity", sorted(GRANULARITIES))
def test_empty_and_all_zero_tensors(backend, granularity):
    for shape in [(0, 16), (5, 0), (0,)]:
        if len(shape) == 1 and granularity != "tensorwise":
            shape = (0, 3)
        q = _q(torch.empty(shape), granularity=granularity, backend=backend)
        assert q.data.shape == shape
        assert fp8.dequantize(q, backend=backend).shape == shape
    z = torch.zeros(7, 40, dtype=torch.bfloat16)
    q = _q(z, granularity=granularity, backend=backend)
    assert (q.scale == 1.0).all()  # amax 0 -> scale 1
    assert (codes_of(q.data) == 0).all()
    assert torch.equal(fp8.dequantize(q, torch.bfloat16, backend=backend), z)
    assert fp8.compute_amax(torch.empty(0)).item() == 0.0


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_nan_and_inf_inputs_follow_the_contract(backend):
    x = torch.tensor([[1.0, math.nan, 3.0, -2.0]])
    q = _q(x, backend=backend)
    assert q.scale.item() == 1.0  # amax NaN -> scale 1; NaN stays NaN, the rest unscaled
    d = fp8.dequantize(q, backend=backend)
    assert math.isnan(d[0, 1].item()) and d[0, [0, 2, 3]].tolist() == [1.0, 3.0, -2.0]
    y = torch.tensor([[math.inf, -math.inf, 1.0]])
    q = _q(y, backend=backend)
    assert q.scale.item() == 1.0  # amax inf -> scale 1; inf saturates to +-max
    assert fp8.dequantize(q, backend=backend).tolist() == [[448.0, -448.0, 1.0]]
    q = _q(y, fmt="e5m2", saturate=False, backend=backend)
    assert fp8.dequantize(q, backend=backend).tolist() == [[math.inf, -math.inf, 1.0]]
    q = _q(y, fmt="e4m3fnuz", backend=backend)
    assert fp8.dequantize(q, backend=backend)[0, :2].isnan().all()  # FNUZ: inf -> NaN
    assert math.isnan(fp8.compute_amax(x).item())


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_quantize_current_scaling(backend):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 300, generator=g) * 7
    q = _q(x, granularity="block_1x128", margin=1, backend=backend)
    amax = x.abs().reshape(6, 1, 300)
    for j in range(3):
        block_amax = amax[:, 0, j * 128 : (j + 1) * 128].amax(dim=1)
        expected = (np.float32(448.0) / block_amax.numpy()) / np.float32(2.0)
        assert np.array_equal(q.scale[:, j].numpy(), expected)
    mx = _q(x, granularity="mx_1x32", backend=backend)
    mant, _ = torch.frexp(mx.scale)
    assert (mant == 0.5).all()  # MX scales are powers of two


# -- hypothesis fuzzing -----------------------------------------------------------------------

_SPECIALS = [0.0, -0.0, math.nan, math.inf, -math.inf, 448.0, 464.0, 465.0, 57344.0, 61440.0,
             240.0, 248.0, 2.0**-9, 2.0**-10, 2.0**-17, 1e-40, -1e-45, 3.4e38, -1.0]  # fmt: skip
_FLOAT_DTYPES = [torch.float32, torch.bfloat16, torch.float16]
_NAMES = sorted(FORMATS)
_ELEMENT_NAMES = [f.name for f in element_formats()]
_FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


@st.composite
def _tensors(draw, min_dims=0, max_dims=3):
    dims = draw(st.integers(min_dims, max_dims))
    shape = tuple(draw(st.lists(st.integers(0, 9), min_size=dims, max_size=dims)))
    if dims == 2 and draw(st.booleans()):
        shape = (shape[0], draw(st.integers(0, 140)))  # past a 128-block
    n = math.prod(shape)
    if n <= 64:  # small: values drawn by hypothesis (shrinks well)
        element = st.one_of(
            st.floats(width=32, allow_nan=True, allow_infinity=True),
            st.sampled_from(_SPECIALS),
            st.floats(-1000, 1000, width=32),
        )
        values = np.array(draw(st.lists(element, min_size=n, max_size=n)), dtype=np.float32)
    else:  # large: a seeded mix of specials, any fp32 bit pattern, and normal data
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        normal = rng.standard_normal(n) * 10.0 ** rng.uniform(-6, 6)
        any_bits = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)
        special = rng.choice(np.array(_SPECIALS), n)
        pick = rng.choice(3, n, p=[0.8, 0.1, 0.1])
        with np.errstate(over="ignore", invalid="ignore"):
            values = np.choose(pick, [normal.astype(np.float32), any_bits, special])
    dtype = draw(st.sampled_from(_FLOAT_DTYPES))
    x = torch.from_numpy(values.astype(np.float32)).reshape(shape).to(dtype)
    if dims == 2 and draw(st.booleans()):
        x = x.t()  # non-contiguous input
    return x


def _both(call):
    """Run ``call(backend)`` on reference and cpu: both raise the same documented error, or
    both return (the results are returned for comparison)."""
    outcomes = []
    for backend in ("reference", "cpu"):
        try:
            outcomes.append(call(backend))
        except Fp8Error as exc:
            outcomes.append(type(exc))
    kinds = [o if isinstance(o, type) else None for o in outcomes]
    assert kinds[0] == kinds[1], outcomes
    # Counted by --hypothesis-show-statistics: most examples must reach the comparison.
    event(f"raised {kinds[0].__name__}" if kinds[0] else "returned")
    return None if kinds[0] is not None else outcomes


def _scales():
    return st.one_of(
        st.none(),
        st.sampled_from([1.0, 0.5, 3.7, 2.0**-3, 2.0**20, 1e-30]),
        st.floats(2.0**-10, 2.0**10, width=32),
    )


@_FUZZ
@given(
    x=_tensors(),
    name=st.sampled_from(_NAMES),
    scale=_scales(),
    saturate=st.booleans(),
    stochastic=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_fuzz_cast_to_fp8(x, name, scale, saturate, stochastic, seed):
    kw = {"saturate": saturate}
    if stochastic:
        g = torch.Generator().manual_seed(seed)
        kw |= {"rounding": "stochastic",
               "rand_bits": torch.randint(-(2**31), 2**31, x.shape, dtype=torch.int32,
                                          generator=g)}  # fmt: skip
    results = _both(lambda b: fp8.cast_to_fp8(x, name, scale, backend=b, **kw))
    if results is None:
        return
    ref, cpu = results
    assert ref.shape == cpu.shape == x.shape and ref.dtype == FORMATS[name].torch_dtype
    assert_same_codes(codes_of(cpu).numpy(), codes_of(ref).numpy(), FORMATS[name], "fuzz")
    back = _both(lambda b: fp8.cast_from_fp8(ref, scale, format=name, backend=b))
    if back is not None:
        assert torch.equal(back[0].isnan(), back[1].isnan())
        ok = ~back[0].isnan()
        assert torch.equal(back[0][ok], back[1][ok])


@_FUZZ
@given(
    x=_tensors(),
    name=st.sampled_from(_ELEMENT_NAMES),
    granularity=st.sampled_from(sorted(GRANULARITIES)),
    margin=st.integers(0, 3),
    power_of_two=st.booleans(),
    saturate=st.booleans(),
    seed=st.one_of(st.none(), st.integers(0, 2**31)),
)
def test_fuzz_quantize_dequantize(x, name, granularity, margin, power_of_two, saturate, seed):
    def run(backend):
        kw = {}
        if seed is not None:  # same seed on both backends -> the same random words
            kw = {"rounding": "stochastic", "generator": torch.Generator().manual_seed(seed)}
        kw |= {"margin": margin, "power_of_two": power_of_two, "saturate": saturate}
        q = fp8.quantize(x, name, granularity=granularity, backend=backend, **kw)
        return q, fp8.dequantize(q, backend=backend)

    results = _both(run)
    if results is None:
        return
    (qr, dr), (qc, dc) = results
    assert torch.equal(qr.scale, qc.scale)
    assert qr.data.shape == x.shape and dr.shape == x.shape
    assert_same_codes(codes_of(qc.data).numpy(), codes_of(qr.data).numpy(), FORMATS[name], "q")
    assert torch.equal(dr.isnan(), dc.isnan())
    assert torch.equal(dr[~dr.isnan()], dc[~dc.isnan()])


_GEMM_PAIRS = [
    ("tensorwise", "tensorwise"),
    ("rowwise", "columnwise"),
    ("block_1x128", "block_128x128"),
    ("mx_1x32", "mx_32x1"),
]


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    m=st.integers(0, 20),
    k=st.integers(0, 150),
    n=st.integers(0, 20),
    pair=st.sampled_from(_GEMM_PAIRS),
    formats=st.tuples(st.sampled_from(_ELEMENT_NAMES), st.sampled_from(_ELEMENT_NAMES)),
    out_dtype=st.sampled_from(_FLOAT_DTYPES),
    with_bias=st.booleans(),
    with_c=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_fuzz_scaled_mm(m, k, n, pair, formats, out_dtype, with_bias, with_c, seed):
    g = torch.Generator().manual_seed(seed)
    a = fp8.quantize(torch.randn(m, k, generator=g), formats[0], granularity=pair[0],
                     backend="reference")  # fmt: skip
    b = fp8.quantize(torch.randn(k, n, generator=g), formats[1], granularity=pair[1],
                     backend="reference")  # fmt: skip
    bias = torch.randn(n, generator=g) if with_bias else None
    c = torch.randn(m, n, generator=g).to(out_dtype) if with_c else None
    results = _both(lambda be: fp8.scaled_mm(a, b, out_dtype=out_dtype, bias=bias, c=c,
                                             backend=be))  # fmt: skip
    assert results is not None  # every combination here is declared by both backends
    ref, cpu = results
    assert ref.shape == cpu.shape == (m, n) and ref.dtype == cpu.dtype == out_dtype
    # Both are within the fp32-accumulator bound of the exact value, so within twice it of
    # each other (see gemm_error_bound's derivation).
    s = abs_product_sum(a.data, b.data, a.format, b.format, a.scale, b.scale, a.granularity,
                        b.granularity)  # fmt: skip
    addends = torch.zeros(m, n, dtype=torch.float64)
    if bias is not None:
        addends = addends + bias.double().abs()
    if c is not None:
        addends = addends + c.double().abs()
    bound = gemm_error_bound(s, k, accumulator=FP32_ACCUMULATOR, out_dtype=out_dtype,
                             exact=ref.double(), addends=addends)  # fmt: skip
    assert ((ref.double() - cpu.double()).abs() <= 2 * bound).all()


# -- fast accumulation ----------------------------------------------------------------------


def test_fast_accum_reaches_only_a_backend_that_declares_a_fast_accumulator(reference_gemm_calls):
    from portable_fp8.numerics.gemm import AccumulatorModel, reference_scaled_mm

    _, seen, declare = reference_gemm_calls
    gen = torch.Generator().manual_seed(5)
    qa = fp8.quantize(torch.randn(8, 512, generator=gen), "e4m3fn", backend="reference")
    qb = fp8.quantize(torch.randn(512, 8, generator=gen), "e4m3fn", backend="reference")

    def mm(**kw):
        return fp8.scaled_mm(qa, qb, out_dtype=torch.float32, backend="reference", **kw)

    exact = mm()
    # No fast accumulator declared: the backend is passed False; the result is the default.
    assert torch.equal(mm(fast_accum=True), exact)
    assert seen == [False, False]

    narrow = AccumulatorModel(4, "truncate", 1)  # 5 significant bits: visibly different
    declare(narrow)
    fast = mm(fast_accum=True)
    assert seen[-1] is True
    want = reference_scaled_mm(
        qa.data, qb.data, qa.format, qb.format, qa.scale, qb.scale, qa.granularity,
        qb.granularity, out_dtype=torch.float32, accumulator=narrow,
    )  # fmt: skip
    assert torch.equal(fast, want) and not torch.equal(fast, exact)
    assert torch.equal(mm(), exact) and seen[-1] is False  # default stays the default


# -- the op API takes only what it documents (measured faults, one test each) -----------------

_BOOL_LIKE = ["False", "True", 0, 1, None, torch.tensor(True)]


@pytest.mark.parametrize("value", _BOOL_LIKE, ids=repr)
@pytest.mark.parametrize("flag", ["saturate", "power_of_two"])
def test_flags_must_be_bool(flag, value):
    # saturate="False" used to saturate, power_of_two="False" was taken as true.
    with pytest.raises(Fp8TypeError, match=f"{flag} must be a bool"):
        _q(**{flag: value})
    with pytest.raises(Fp8TypeError, match=f"{flag} must be a bool"):
        fp8.quantize_transpose(X, backend="reference", **{flag: value})
    if flag == "saturate":
        with pytest.raises(Fp8TypeError, match="saturate must be a bool"):
            fp8.cast_to_fp8(X, saturate=value, backend="reference")
    a, b = _q(), _q(x=torch.ones(16, 8))
    with pytest.raises(Fp8TypeError, match="fast_accum must be a bool"):
        fp8.scaled_mm(a, b, fast_accum=value, backend="reference")


@pytest.mark.parametrize(
    ("margin", "exc"),
    [(None, Fp8TypeError), ("1", Fp8TypeError), (1.0, Fp8TypeError), (True, Fp8TypeError),
     (-1, Fp8ValueError), (7, Fp8ValueError), (200, Fp8ValueError), (2000, Fp8ValueError)],
)  # fmt: skip
def test_margin_must_be_an_int_in_range(margin, exc):
    # None/"1" raised TypeError, 2000 OverflowError, 200 gave scale 0 and NaN on dequantise.
    with pytest.raises(exc, match="margin"):
        _q(margin=margin)
    with pytest.raises(exc, match="margin"):
        fp8.quantize_transpose(X, margin=margin, backend="reference")


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_largest_margin_keeps_a_normal_scale_for_the_largest_amax(backend):
    big = torch.tensor([[torch.finfo(torch.float32).max, 1.0]])
    for fmt in element_formats():
        top = fp8.numerics.scaling.max_margin(fmt)
        t = fp8.quantize(big, fmt, margin=top, backend=backend)
        s = float(t.scale)
        assert torch.finfo(torch.float32).tiny <= s < math.inf, (fmt.name, s)
        assert torch.isfinite(fp8.dequantize(t, backend=backend)).all()


_BAD_SCALES = [0.0, -0.0, -1.0, math.nan, math.inf, -math.inf, 1e39, 1e-45, 2.0**-127]


@pytest.mark.parametrize("scale", _BAD_SCALES, ids=repr)
@pytest.mark.parametrize("as_tensor", [False, True])
def test_scales_must_be_positive_normal_fp32(scale, as_tensor):
    # 0, NaN, negative and inf scales were accepted; 1e39 raised a raw RuntimeError.
    s = torch.tensor(scale, dtype=torch.float64) if as_tensor else scale
    with pytest.raises(Fp8ValueError, match="scale must"):
        fp8.cast_to_fp8(X, scale=s, backend="cpu")
    with pytest.raises(Fp8ValueError, match="scale must"):
        fp8.cast_from_fp8(_q().data, s, backend="cpu")
    with pytest.raises(Fp8ValueError, match="scale must"):
        _q(scale=s)
    with pytest.raises(Fp8ValueError, match="scale must"):
        fp8.quantize_transpose(X, scale=s, backend="reference")
    rowwise = torch.full((4, 1), 2.0, dtype=torch.float64)  # fp32 of 1e39 is inf: rejected
    rowwise[2] = float(scale)
    with pytest.raises(Fp8ValueError, match="scale must"):
        _q(granularity="rowwise", scale=rowwise)


def test_extreme_valid_scales_are_accepted():
    for s in (2.0**-126, torch.finfo(torch.float32).max, 1.0):
        assert fp8.cast_to_fp8(torch.zeros(2), scale=s, backend="cpu").float().eq(0).all()


def test_amax_argument_is_not_a_scale():
    # amax is a measurement: zero/inf/NaN/negative amax follow the contract (scale 1 or |amax|).
    for amax in (0.0, math.inf, math.nan):
        q, _, _ = fp8.quantize_transpose(X, amax=torch.tensor(amax), backend="reference")
        assert float(q.scale) == 1.0
    q, _, _ = fp8.quantize_transpose(X, amax=torch.tensor(-10.0), backend="reference")
    assert float(q.scale) == pytest.approx(44.8)


@pytest.mark.parametrize("generator", [42, "gen", 1.0, torch.zeros(1)], ids=repr)
def test_generator_must_be_a_torch_generator(generator):
    with pytest.raises(Fp8TypeError, match="generator must be a torch.Generator"):
        fp8.cast_to_fp8(X, rounding="stochastic", generator=generator, backend="reference")


@pytest.mark.parametrize(
    "make",
    [lambda: X.to_sparse(), lambda: X.to_sparse_csr(),
     lambda: torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])],
    ids=["coo", "csr", "nested"],
)  # fmt: skip
def test_only_dense_tensors_are_accepted(make):
    x = make()
    with pytest.raises(Fp8ValueError, match="dense"):
        fp8.cast_to_fp8(x, backend="reference")
    with pytest.raises(Fp8ValueError, match="dense"):
        _q(x=x)
    with pytest.raises(Fp8ValueError, match="dense"):
        fp8.compute_amax(x)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.int32, torch.bool, torch.float64])
def test_other_dtypes_are_type_errors(dtype):
    with pytest.raises(Fp8TypeError, match="float32, bfloat16 or float16"):
        fp8.compute_amax(torch.zeros(3, dtype=dtype))


@pytest.mark.parametrize("value", [None, "float32", float, torch.float64, 1], ids=repr)
def test_out_dtype_of_wrong_type(value):
    with pytest.raises(Fp8TypeError, match="out_dtype"):
        fp8.dequantize(_q(), value)
    with pytest.raises(Fp8TypeError, match="out_dtype"):
        fp8.cast_from_fp8(_q().data, out_dtype=value)


@pytest.mark.parametrize("rounding", [None, 1, ["nearest"], "Nearest"], ids=repr)
def test_rounding_of_wrong_type(rounding):
    with pytest.raises(Fp8ValueError, match="rounding must be one of"):
        fp8.cast_to_fp8(X, rounding=rounding, backend="reference")


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_inconsistent_fp8_tensors_give_the_same_error_on_every_backend(backend):
    # Codes in another format's dtype decoded differently on reference and cpu, a wrongly
    # shaped scale raised a raw RuntimeError on one and ValueError on the other. Such a tensor
    # can no longer be built; a zero scale (a value, checked by the op layer) is refused alike.
    t = _q(granularity="rowwise")
    with pytest.raises(Fp8TypeError, match=r"data has dtype torch.float8_e5m2.*e4m3fn"):
        fp8.Fp8Tensor(t.data.view(torch.uint8).view(torch.float8_e5m2), t.scale, t.format,
                      t.granularity)  # fmt: skip
    with pytest.raises(Fp8ValueError, match=r"scale has shape \(3,\).*\(4, 1\)"):
        fp8.Fp8Tensor(t.data, torch.ones(3), t.format, t.granularity)
    zero = fp8.Fp8Tensor(t.data, torch.zeros_like(t.scale), t.format, t.granularity)
    with pytest.raises(Fp8ValueError, match="t.scale must"):
        fp8.dequantize(zero, backend=backend)
    b = _q(x=torch.ones(16, 8), granularity="columnwise")
    with pytest.raises(Fp8ValueError, match="a.scale must"):
        fp8.scaled_mm(zero, b, backend=backend)


@pytest.mark.parametrize("granularity", ["tensorwise", "rowwise", "block_1x128", "mx_1x32"])
def test_results_carry_no_autograd_state(granularity):
    # Rowwise/blockwise quantize of an input requiring grad returned a scale requiring grad.
    x = torch.randn(4, 256, requires_grad=True)
    t = _q(x=x, granularity=granularity)
    assert not t.data.requires_grad and not t.scale.requires_grad
    given = fp8.quantize(x, granularity="tensorwise", scale=torch.tensor(2.0, requires_grad=True))
    assert not given.scale.requires_grad
    q, qt, amax = fp8.quantize_transpose(x, backend="reference")
    assert not any(v.requires_grad for v in (q.data, q.scale, qt.data, amax))
    assert not fp8.compute_amax(x).requires_grad
    assert not fp8.cast_to_fp8(x, backend="reference").requires_grad
    a, b = _q(x=torch.randn(4, 16)), _q(x=torch.randn(16, 8))
    out = fp8.scaled_mm(a, b, bias=torch.zeros(8, requires_grad=True), backend="reference")
    assert not out.requires_grad


@pytest.mark.parametrize("backend", [[1], {}, b"cpu", 1.5, 0], ids=repr)
def test_backend_must_be_a_name(backend):
    # backend={} used to be taken as "let the registry choose", [1] raised a raw TypeError.
    with pytest.raises(Fp8TypeError, match="backend must be a backend name"):
        fp8.cast_to_fp8(X, backend=backend)
    a, b = _q(), _q(x=torch.ones(16, 8))
    with pytest.raises(Fp8TypeError, match="backend must be a backend name"):
        fp8.scaled_mm(a, b, backend=backend)


def test_amax_beyond_fp32_is_inf_not_a_crash():
    # Found by tests/test_fuzz_ops.py: amax=1e39 raised a raw RuntimeError from torch.full.
    q, _, _ = fp8.quantize_transpose(X, amax=1e39, backend="reference")
    assert float(q.scale) == 1.0  # inf amax gives scale 1 (contract)
