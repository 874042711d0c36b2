"""Property-based fuzzing of the public op API: it takes only what it documents.

Every public op (cast_to_fp8, cast_from_fp8, quantize, dequantize, quantize_transpose,
compute_amax, scaled_mm) is called with arguments drawn from valid and invalid values of
every parameter: wrong types (None, strings, bools, ints, lists, generators), wrong values
(NaN/inf/negative/zero/huge/tiny scales, out-of-range margins), wrong-shaped, wrong-dtype,
sparse and autograd tensors, and Fp8Tensors whose parts disagree. Each call runs on the
``reference`` and the ``cpu`` backend. Properties:

* a call either succeeds or raises an :class:`~portable_fp8.errors.Fp8Error` subclass;
  anything else fails the test;
* a validation error does not depend on the backend: where one backend raises something
  other than NotSupportedError, the other raises the same type;
* where both succeed, the results agree bit for bit: codes as uint8 views, scales, amaxes
  and dequantised outputs (NaN positions included; any NaN code counts as NaN, as the
  contract allows). For scaled_mm the cpu backend declares
  an fp32 accumulator, so each result is instead checked against the exact float64 product
  of the dequantised operands within :func:`portable_fp8.numerics.gemm.gemm_error_bound`
  for the accumulator its backend declares (elements whose exact value is finite);
* results carry no autograd state, even for inputs that require grad.

Settings: the ``derandomize=True`` profile (a fixed sequence of examples, no database), 60
examples per op in CI (7 ops x 2 backends, a few seconds on a 2-core machine). Longer runs:
``PORTABLE_FP8_FUZZ_EXAMPLES=5000 pytest -s tests/test_fuzz_ops.py`` (``-s`` shows a summary
of the calls made and the exception types seen).
"""

from __future__ import annotations

import math
import os
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import portable_fp8 as fp8
from portable_fp8.dispatch.registry import select_backend
from portable_fp8.errors import Fp8Error, NotSupportedError
from portable_fp8.numerics.formats import FORMATS
from portable_fp8.numerics.gemm import abs_product_sum, gemm_error_bound
from portable_fp8.numerics.granularity import GRANULARITIES
from portable_fp8.numerics.tensor import Fp8Tensor

EXAMPLES = int(os.environ.get("PORTABLE_FP8_FUZZ_EXAMPLES", "60"))
BACKENDS = ("reference", "cpu")
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)

#: Calls made and exception types seen, over the whole module (printed at teardown).
STATS: Counter[str] = Counter()

# ------------------------------------------------------------------ value strategies

_SPECIAL = [0.0, -0.0, 1.0, -1.0, 448.0, 465.0, 57344.0, 1e30, -1e30, 1e-40, 2.0**-149,
            math.inf, -math.inf, math.nan]  # fmt: skip
_floats = st.one_of(
    st.floats(-1e4, 1e4, allow_nan=False, width=32),
    st.sampled_from(_SPECIAL),
    st.floats(width=32),
)
_shapes = st.one_of(
    st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple),
    st.sampled_from([(3, 128), (128, 4), (2, 64), (1, 33)]),
)
_VALID_DTYPES = [torch.float32, torch.bfloat16, torch.float16]
_BAD_DTYPES = [torch.float64, torch.int32, torch.int64, torch.bool, torch.uint8,
               torch.complex64, torch.float8_e4m3fn]  # fmt: skip


@st.composite
def _values(draw, shape: tuple[int, ...]) -> torch.Tensor:
    n = math.prod(shape)
    scale = draw(st.sampled_from([1.0, 1e-3, 1e3, 2.0**-20]))
    if n <= 64:
        vals = draw(st.lists(_floats, min_size=n, max_size=n))
        return torch.tensor(vals, dtype=torch.float32).reshape(shape) * scale
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    return torch.randn(shape, generator=g) * scale


@st.composite
def tensors(draw, dtypes=None, shape=None) -> torch.Tensor:
    """A valid fp32/bf16/fp16 tensor, possibly transposed or requiring grad."""
    shape = draw(_shapes) if shape is None else shape
    dtype = draw(st.sampled_from(dtypes or _VALID_DTYPES))
    x = draw(_values(shape)).to(dtype)
    if x.dim() == 2 and draw(st.booleans()):
        x = x.t().contiguous().t()  # same shape, non-contiguous strides
    if dtype.is_floating_point and draw(st.integers(0, 4)) == 0:
        x = x.requires_grad_(True)
    return x


@st.composite
def bad_tensors(draw) -> object:
    """Tensors the ops must reject (or objects that are not tensors)."""
    kind = draw(st.sampled_from(["dtype", "sparse", "csr", "nested", "notensor"]))
    shape = draw(_shapes)
    if kind == "dtype":
        dtype = draw(st.sampled_from(_BAD_DTYPES))
        return torch.zeros(shape).to(dtype)
    if kind == "sparse":
        return torch.ones(shape).to_sparse()
    if kind == "csr":
        return torch.ones(3, 4).to_sparse_csr()
    if kind == "nested":
        return torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])
    return draw(st.sampled_from([None, 1.0, [1.0, 2.0], "x", True]))


def inputs() -> st.SearchStrategy:
    return st.one_of(tensors(), tensors(), tensors(), bad_tensors())


_BAD_ANY = [None, "x", "", 42, -1, 1.5, True, False, [1], (), b"a", torch.zeros(2)]
formats = st.one_of(
    st.sampled_from([f.name for f in FORMATS.values()]),
    st.sampled_from([f.torch_dtype for f in FORMATS.values()]),
    st.sampled_from(list(FORMATS.values())),
    st.sampled_from(["E4M3", "bogus", torch.float32, torch.int8, *_BAD_ANY]),
)
granularities = st.one_of(
    st.sampled_from(list(GRANULARITIES)),
    st.sampled_from(list(GRANULARITIES.values())),
    st.sampled_from(["blocks", *_BAD_ANY]),
)
flags = st.sampled_from([True, False, True, False, "False", "True", 0, 1, None, 1.0])
roundings = st.sampled_from(["nearest", "nearest", "stochastic", "Nearest", None, 1, ["nearest"]])
margins = st.one_of(
    st.integers(0, 6), st.integers(-3, 16), st.sampled_from([None, "1", 1.0, True, 200, 2000])
)
out_dtypes = st.sampled_from(
    [*_VALID_DTYPES, *_VALID_DTYPES, torch.float64, torch.int32, "float32", None, 1, float]
)
scalar_scales = st.one_of(
    st.none(),
    st.floats(2.0**-20, 2.0**20),
    st.sampled_from(
        [
            0.0,
            -1.0,
            -0.0,
            math.nan,
            math.inf,
            -math.inf,
            1e39,
            1e-45,
            1e-39,
            3.4e38,
            2**200,
            1,
            True,
            "1",
            [1.0],
        ]
    ),  # fmt: skip
)


@st.composite
def scales_for(draw, shape: tuple[int, ...]) -> object:
    """A scale argument: None, a number, or a tensor of ``shape`` (or a wrong one)."""
    kind = draw(st.sampled_from(["scalar", "tensor", "tensor", "bad"]))
    if kind == "scalar":
        return draw(scalar_scales)
    if kind == "bad":
        return draw(
            st.sampled_from(
                [
                    torch.ones(7),
                    torch.ones(shape, dtype=torch.int32),
                    torch.ones(()).to_sparse(),
                    torch.ones(shape, dtype=torch.complex64),
                    "s",
                ]  # fmt: skip
            )
        )
    n = math.prod(shape)
    bad = st.sampled_from([0.0, -2.0, math.nan, math.inf])
    vals = draw(st.lists(st.one_of(st.floats(2.0**-10, 2.0**10), bad), min_size=n, max_size=n))
    dtype = draw(st.sampled_from([torch.float32, torch.float32, torch.float64, torch.bfloat16]))
    s = torch.tensor(vals, dtype=dtype).reshape(shape)
    return s.requires_grad_(True) if draw(st.integers(0, 5)) == 0 else s


@st.composite
def generators(draw) -> object:
    """A factory (called once per backend, so both draw the same bits) or a bad value."""
    kind = draw(st.sampled_from(["none", "none", "gen", "bad"]))
    if kind == "gen":
        seed = draw(st.integers(0, 2**31))
        return lambda: torch.Generator().manual_seed(seed)
    bad = None if kind == "none" else draw(st.sampled_from([42, "gen", 1.0, torch.zeros(1)]))
    return lambda: bad


@st.composite
def rand_bits_for(draw, shape) -> object:
    kind = draw(st.sampled_from(["none", "none", "ok", "shape", "dtype", "bad"]))
    if kind == "none":
        return None
    if kind == "ok":
        g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
        return torch.randint(-(2**31), 2**31, shape, dtype=torch.int32, generator=g)
    if kind == "shape":
        return torch.zeros(7, dtype=torch.int32)
    if kind == "dtype":
        return torch.zeros(shape, dtype=torch.float32)
    return draw(st.sampled_from([42, "bits", torch.zeros(shape, dtype=torch.int32).to_sparse()]))


def _shape_of(x: object) -> tuple[int, ...]:
    """``x``'s shape where it has one (a dense tensor), else ()."""
    ok = isinstance(x, torch.Tensor) and x.layout is torch.strided and not x.is_nested
    return tuple(x.shape) if ok else ()


def _scale_shape(x: object, gran: object) -> tuple[int, ...]:
    """The scale shape ``gran`` gives ``x`` where both are valid, else ()."""
    try:
        g = fp8.get_granularity(gran)
        shape = _shape_of(x)
        if g.is_tensorwise or not shape:
            return ()
        return tuple(g.scale_shape(fp8.numerics.granularity.as_2d_shape(shape)))
    except Exception:
        return ()


# ------------------------------------------------------------------ the two-backend harness


def _outcome(call, backend: str):
    """``('ok', result)`` or ``('err', exception)``; an undocumented exception fails."""
    try:
        result = call(backend)
    except Fp8Error as e:
        STATS[f"raised {type(e).__name__}"] += 1
        return "err", e
    except Exception as e:  # noqa: BLE001 - the property under test
        STATS[f"UNDOCUMENTED {type(e).__name__}"] += 1
        raise AssertionError(f"undocumented {type(e).__name__} on {backend}: {e}") from e
    STATS["succeeded"] += 1
    return "ok", result


def _leaves(result) -> list[torch.Tensor]:
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, Fp8Tensor):
        return [result.data, result.scale]
    if isinstance(result, tuple):
        return [t for r in result for t in _leaves(r)]
    raise AssertionError(f"unexpected result type {type(result).__name__}")


def _bits(t: torch.Tensor) -> torch.Tensor:
    """A tensor's bytes, for bit-for-bit comparison (-0 vs +0 and NaN payloads included)."""
    t = t.detach().contiguous()
    if t.dtype.itemsize == 1:
        return t.view(torch.uint8)
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.dtype.itemsize])


def _same_nan_or_bits(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Equal bits, except that any NaN equals any NaN (backends may emit another NaN code)."""
    if x.is_floating_point() and x.dtype.itemsize > 1:
        nx, ny = torch.isnan(x), torch.isnan(y)
        return bool(torch.equal(nx, ny) and torch.equal(_bits(x)[~nx], _bits(y)[~ny]))
    return torch.equal(_bits(x), _bits(y))


def _check_agree(res_ref, res_cpu, fmt_of=None) -> None:
    a, b = _leaves(res_ref), _leaves(res_cpu)
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert not x.requires_grad and not y.requires_grad, "a result carries autograd state"
        assert x.shape == y.shape and x.dtype == y.dtype
        if x.dtype.itemsize == 1 and fmt_of is not None:
            # FP8 codes: NaN codes may differ (the contract allows any NaN code).
            fmt = fmt_of()
            vx, vy = fmt.code_values[_bits(x).long()], fmt.code_values[_bits(y).long()]
            assert _same_nan_or_bits(vx, vy), "codes differ between reference and cpu"
            assert torch.equal(_bits(x)[~vx.isnan()], _bits(y)[~vy.isnan()])
        else:
            assert _same_nan_or_bits(x, y), "results differ between reference and cpu"


def run_both(call, fmt_of=None, compare=True) -> None:
    """Run ``call(backend)`` on both backends and check the properties."""
    outs = {be: _outcome(call, be) for be in BACKENDS}
    (kr, rr), (kc, rc) = outs["reference"], outs["cpu"]
    if kr == "err" and kc == "err":
        if not (isinstance(rr, NotSupportedError) or isinstance(rc, NotSupportedError)):
            assert type(rr) is type(rc), f"reference raised {rr!r}, cpu {rc!r}"
    elif kr != kc:
        err = rr if kr == "err" else rc
        assert isinstance(err, NotSupportedError), f"only one backend raised: {err!r}"
    elif compare:
        for r in (rr, rc):
            for t in _leaves(r):
                assert not t.requires_grad, "a result carries autograd state"
        _check_agree(rr, rc, fmt_of)


def _same_bits(rounding, rand_bits, gen) -> bool:
    """Whether both backends round with the same bits (stochastic rounding without explicit
    bits or a seeded generator draws from torch's global generator: different per call)."""
    return rounding != "stochastic" or rand_bits is not None or gen() is not None


def _fmt_of(format):
    return lambda: fp8.get_format(format)


# ------------------------------------------------------------------ one test per op


@FUZZ
@given(x=inputs())
def test_fuzz_compute_amax(x) -> None:
    run_both(lambda be: fp8.compute_amax(x))


@FUZZ
@given(data=st.data(), x=inputs(), format=formats, saturate=flags, rounding=roundings)
def test_fuzz_cast_to_fp8(data, x, format, saturate, rounding) -> None:
    shape = _shape_of(x)
    scale = data.draw(scales_for(()))
    rand_bits = data.draw(rand_bits_for(shape))
    gen = data.draw(generators())
    backend = data.draw(st.sampled_from([None, None, None, 3, "nope", [1], {}, b"cpu"]))

    def call(be):
        return fp8.cast_to_fp8(
            x, format, scale, saturate=saturate, rounding=rounding, rand_bits=rand_bits,
            generator=gen(), backend=be if backend is None else backend,
        )  # fmt: skip

    run_both(call, _fmt_of(format), compare=_same_bits(rounding, rand_bits, gen))


@FUZZ
@given(data=st.data(), format=formats, out_dtype=out_dtypes)
def test_fuzz_cast_from_fp8(data, format, out_dtype) -> None:
    shape = data.draw(_shapes)
    kind = data.draw(st.sampled_from(["codes", "codes", "uint8", "bad"]))
    if kind == "bad":
        q = data.draw(bad_tensors())
    else:
        raw = torch.tensor(
            data.draw(st.lists(st.integers(0, 255), min_size=math.prod(shape),
                               max_size=math.prod(shape))), dtype=torch.uint8,
        ).reshape(shape)  # fmt: skip
        dtype = data.draw(st.sampled_from([f.torch_dtype for f in FORMATS.values()]))
        q = raw if kind == "uint8" else raw.view(dtype)
    scale = data.draw(scales_for(()))
    fmt_arg = data.draw(st.one_of(st.none(), st.just(format)))

    def call(be):
        return fp8.cast_from_fp8(q, scale, format=fmt_arg, out_dtype=out_dtype, backend=be)

    run_both(call)


@FUZZ
@given(
    data=st.data(), x=inputs(), format=formats, granularity=granularities, margin=margins,
    power_of_two=flags, saturate=flags, rounding=roundings,
)  # fmt: skip
def test_fuzz_quantize(data, x, format, granularity, margin, power_of_two, saturate, rounding):
    shape = _shape_of(x)
    scale = data.draw(st.one_of(st.none(), scales_for(_scale_shape(x, granularity))))
    rand_bits = data.draw(rand_bits_for(shape))
    gen = data.draw(generators())

    def call(be):
        t = fp8.quantize(
            x, format, granularity=granularity, scale=scale, margin=margin,
            power_of_two=power_of_two, saturate=saturate, rounding=rounding,
            rand_bits=rand_bits, generator=gen(), backend=be,
        )  # fmt: skip
        assert isinstance(t, Fp8Tensor)
        return t, fp8.dequantize(t, backend="reference")

    run_both(call, _fmt_of(format), compare=_same_bits(rounding, rand_bits, gen))


@FUZZ
@given(data=st.data(), format=formats, margin=margins, power_of_two=flags, saturate=flags)
def test_fuzz_quantize_transpose(data, format, margin, power_of_two, saturate) -> None:
    x = data.draw(
        st.one_of(
            tensors(shape=data.draw(st.tuples(st.integers(0, 5), st.integers(0, 5)))),
            inputs(),
        )
    )
    which = data.draw(st.sampled_from(["none", "scale", "amax", "both"]))
    scale = data.draw(scales_for(())) if which in ("scale", "both") else None
    amax = data.draw(scales_for(())) if which in ("amax", "both") else None

    def call(be):
        q, qt, a = fp8.quantize_transpose(
            x, format, scale=scale, amax=amax, margin=margin, power_of_two=power_of_two,
            saturate=saturate, backend=be,
        )  # fmt: skip
        return q, qt, a

    run_both(call, _fmt_of(format))


def _built(data: torch.Tensor, scale: torch.Tensor, like: Fp8Tensor) -> object:
    """``Fp8Tensor(data, scale, ...)`` with ``like``'s format and granularity; where the
    constructor refuses the parts (only with a documented error, else the test fails), the
    raw ``(data, scale)`` pair, which every op must refuse in turn."""
    outcome, value = _outcome(
        lambda _: Fp8Tensor(data, scale, like.format, like.granularity), "Fp8Tensor"
    )
    return value if outcome == "ok" else (data, scale)


@st.composite
def fp8_tensors(draw, shape=None, gran=None) -> object:
    """An Fp8Tensor from the reference quantiser, or one whose parts disagree."""
    shape = shape or draw(st.sampled_from([(2, 3), (4, 4), (0, 3), (3,), (1, 128)]))
    gran = gran or draw(st.sampled_from(["tensorwise", "rowwise", "columnwise"]))
    fmt = draw(st.sampled_from(["e4m3fn", "e5m2", "e4m3fnuz", "e5m2fnuz", "e4m3_gaudi2"]))
    x = draw(_values(shape))
    t = fp8.quantize(x, fmt, granularity=gran, backend="reference")
    kind = draw(st.sampled_from(["ok", "ok", "ok", "dtype", "scale_shape", "scale_value",
                                 "scale_dtype", "grad", "notfp8", "uint8"]))  # fmt: skip
    if kind == "dtype":
        other = draw(st.sampled_from([torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float32]))
        data = t.data.view(torch.uint8).view(other) if other.itemsize == 1 else t.data.float()
        return _built(data, t.scale, t)
    if kind == "uint8":
        return _built(t.data.view(torch.uint8), t.scale, t)
    if kind == "scale_shape":
        return _built(t.data, torch.ones(5), t)
    if kind == "scale_value":
        bad = draw(st.sampled_from([0.0, -1.0, math.nan, math.inf]))
        return _built(t.data, torch.full_like(t.scale, bad), t)
    if kind == "scale_dtype":
        return _built(t.data, t.scale.double(), t)
    if kind == "grad":
        return _built(t.data, t.scale.clone().requires_grad_(True), t)
    if kind == "notfp8":
        return draw(st.sampled_from([x, None, "t", (t.data, t.scale)]))
    return t


@FUZZ
@given(t=fp8_tensors(), out_dtype=out_dtypes)
def test_fuzz_dequantize(t, out_dtype) -> None:
    run_both(lambda be: fp8.dequantize(t, out_dtype, backend=be))


_GEMM_PAIRS = [("tensorwise", "tensorwise"), ("rowwise", "columnwise"),
               ("block_1x128", "block_128x128"), ("mx_1x32", "mx_32x1"),
               ("rowwise", "tensorwise")]  # fmt: skip


@FUZZ
@given(data=st.data(), out_dtype=out_dtypes, fast_accum=flags)
def test_fuzz_scaled_mm(data, out_dtype, fast_accum) -> None:
    ga, gb = data.draw(st.sampled_from(_GEMM_PAIRS))
    m, n = data.draw(st.integers(0, 4)), data.draw(st.integers(0, 4))
    k = data.draw(st.sampled_from([0, 1, 3, 16, 32, 128]))
    if data.draw(st.integers(0, 3)) == 0:
        a, b = data.draw(fp8_tensors()), data.draw(fp8_tensors())
    else:
        a = data.draw(fp8_tensors(shape=(m, k), gran=ga))
        bt = data.draw(fp8_tensors(shape=(n, k), gran=fp8.get_granularity(gb).transposed().name))
        b = bt.t() if isinstance(bt, Fp8Tensor) and bt.data.dim() == 2 else bt
    bias = data.draw(st.sampled_from(["none", "ok", "shape", "int"]))
    c = data.draw(st.sampled_from(["none", "ok", "bad"]))
    bias_t = {"none": None, "ok": torch.randn(n), "shape": torch.randn(n + 1),
              "int": torch.ones(n, dtype=torch.int32)}[bias]  # fmt: skip
    c_t = {"none": None, "ok": torch.randn(m, n), "bad": "c"}[c]

    def call(be):
        if bias_t is None and c_t is None:
            return fp8.scaled_mm(a, b, out_dtype=out_dtype, fast_accum=fast_accum, backend=be)
        return fp8.scaled_mm(
            a, b, out_dtype=out_dtype, bias=bias_t, c=c_t, fast_accum=fast_accum, backend=be
        )

    outs = {be: _outcome(call, be) for be in BACKENDS}
    run_both(lambda be: _reraise(outs[be]), compare=False)
    for be, (kind, out) in outs.items():
        if kind == "ok":
            assert not out.requires_grad
            _check_gemm_bound(be, a, b, bias_t, c_t, out)


def _reraise(outcome):
    kind, value = outcome
    if kind == "err":
        raise value
    return value


def _check_gemm_bound(backend, a, b, bias, c, out) -> None:
    """|out - exact| <= gemm_error_bound for ``backend``'s declared accumulator, where the
    exact value rounded to out_dtype is finite (NaN/inf propagation is the conformance
    suite's job)."""
    A = fp8.dequantize(a, torch.float32, backend="reference").double()
    B = fp8.dequantize(b, torch.float32, backend="reference").double()
    exact = A @ B
    addends = torch.zeros_like(exact)
    if bias is not None:
        exact, addends = exact + bias.double(), addends + bias.double().abs()
    if c is not None:
        exact, addends = exact + c.double(), addends + c.double().abs()
    abs_sum = abs_product_sum(a.data, b.data, a.format, b.format, a.scale, b.scale,
                              a.granularity, b.granularity)  # fmt: skip
    k = a.data.shape[1]
    caps = select_backend(backend, "cpu").capabilities
    bound = gemm_error_bound(abs_sum, k, accumulator=caps.accumulator, out_dtype=out.dtype,
                             exact=exact, addends=addends)  # fmt: skip
    # The float64 product's own rounding: gamma_{K+2}(2**-53) times the magnitudes.
    n64 = k + 2
    bound = bound + n64 * 2.0**-53 / (1 - n64 * 2.0**-53) * (abs_sum + addends)
    # Only where the contract's output, the exact value rounded to out_dtype, is finite
    # (beyond fp16's range it is inf, which no finite bound covers).
    rounded = exact.to(torch.float32).to(out.dtype)
    ok = torch.isfinite(rounded) & torch.isfinite(bound)
    err = (out.double() - exact).abs()
    assert bool((err[ok] <= bound[ok]).all()), f"{backend}: GEMM error above the bound"


def teardown_module() -> None:
    total = sum(v for key, v in STATS.items() if key != "succeeded") + STATS["succeeded"]
    print(f"\nfuzzed calls: {total}; outcomes: {dict(sorted(STATS.items()))}")


def test_stats_have_no_undocumented_exceptions() -> None:
    assert not [key for key in STATS if key.startswith("UNDOCUMENTED")]


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(pytest.main([__file__, "-s", "-q"]))
