"""The reference cast against ml_dtypes and against the tests' float64 model of the contract.

Three independent witnesses:

* ml_dtypes (C++ casts, non-saturating) on all 65,536 bf16 and fp16 bit patterns;
* ``reference_round`` (tests/conftest.py): nearest value of the decode table in float64,
  ties to the even code, then the contract's overflow and sign rules;
* hand-derived values from the format definitions for the edge cases.

Where the contract deliberately differs from ml_dtypes, the test says so and checks the
difference exactly:

* ``saturate=True`` differs only on inputs whose rounded magnitude exceeds max, and on
  +-inf: those give +-max (FNUZ: inf gives NaN), where ml_dtypes gives inf or NaN;
* E8M0 on fp32-subnormal inputs in the open interval (2**-127, 1.5 * 2**-127): ml_dtypes
  rounds up to 2**-126, the contract rounds to the nearest scale, 2**-127;
* float64 inputs: ml_dtypes' float64 -> FP8 path rounds to fp32 first (double rounding);
  the contract's inputs are fp32/bf16/fp16 only, so ops reject float64.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import torch
from conftest import (
    assert_same_codes,
    format_grid,
    reference_round,
)

import portable_fp8 as fp8
from portable_fp8.numerics.cast import (
    amax,
    codes_of,
    codes_to_float,
    round_to_codes,
    scaled_fp32,
)
from portable_fp8.numerics.formats import FORMATS, NanEncoding

ML_NAMES = ["e4m3fn", "e5m2", "e4m3fnuz", "e5m2fnuz", "e8m0fnu"]
ALL_NAMES = sorted(FORMATS)
SOURCES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _all_patterns(src: str) -> torch.Tensor:
    """Every bit pattern of a 16-bit float type, as a tensor of that type."""
    bits = torch.arange(0, 2**16, dtype=torch.int32).to(torch.int16)  # wraps: 0x8000.. < 0
    return bits.view(SOURCES[src])


def _ml_codes(x: torch.Tensor, name: str) -> np.ndarray:
    """ml_dtypes' cast of a bf16/fp16 tensor, straight from the 16-bit type (its own path)."""
    bits = x.view(torch.int16).numpy()
    src = bits.view(ml_dtypes.bfloat16 if x.dtype == torch.bfloat16 else np.float16)
    with np.errstate(invalid="ignore", over="ignore"):
        return src.astype(getattr(ml_dtypes, f"float8_{name}")).view(np.uint8)


def _ml_codes32(y: np.ndarray, name: str) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        return y.astype(np.float32).astype(getattr(ml_dtypes, f"float8_{name}")).view(np.uint8)


def _ours(x: torch.Tensor, name: str, saturate: bool, **kw) -> np.ndarray:
    q = fp8.cast_to_fp8(x, name, saturate=saturate, backend="reference", **kw)
    return codes_of(q).numpy()


def _emulate(y: np.ndarray, name: str, saturate: bool, rand_bits=None) -> np.ndarray:
    r = None if rand_bits is None else torch.from_numpy(np.asarray(rand_bits))
    t = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
    return round_to_codes(t, FORMATS[name], saturate=saturate, rand_bits=r).numpy()


def _ml_dtypes_e8m0_rounds_up_below_2_pow_126() -> bool:
    """ml_dtypes before 0.7 cast (2**-127, 1.5 * 2**-127) up to 2**-126 (code 1); 0.7 rounds
    it to the nearest scale, 2**-127 (code 0), as the contract does."""
    probe = np.array([1.25 * 2.0**-127], dtype=np.float32)
    return int(_ml_codes32(probe, "e8m0fnu")[0]) == 1


def _e8m0_known_difference(x64: np.ndarray) -> np.ndarray:
    """Where the installed ml_dtypes' E8M0 cast differs from the contract: the open interval
    (2**-127, 1.5 * 2**-127) before ml_dtypes 0.7, nowhere from 0.7 on."""
    if not _ml_dtypes_e8m0_rounds_up_below_2_pow_126():
        return np.zeros(x64.shape, dtype=bool)
    return _e8m0_nearest_is_code_0_above_2_pow_127(x64)


def _e8m0_nearest_is_code_0_above_2_pow_127(x64: np.ndarray) -> np.ndarray:
    """(2**-127, 1.5 * 2**-127), open: the contract rounds these down to 2**-127 (code 0)."""
    return (x64 > 2.0**-127) & (x64 < 1.5 * 2.0**-127)


# -- exhaustive 16-bit inputs --------------------------------------------------------------


@pytest.mark.parametrize("src", SOURCES)
@pytest.mark.parametrize("name", ML_NAMES)
def test_exhaustive_non_saturating_matches_ml_dtypes(src, name):
    x = _all_patterns(src)
    ours = _ours(x, name, saturate=False)
    theirs = _ml_codes(x, name)
    known = np.zeros(ours.shape, dtype=bool)
    if name == "e8m0fnu":
        x64 = x.double().numpy()
        down = _e8m0_nearest_is_code_0_above_2_pow_127(x64)
        assert np.all(ours[down] == 0)  # contract: nearest, code 0 (2**-127)
        if src == "bf16":  # bf16 spells fp32 subnormals; fp16 widens to fp32 normals only
            assert down.sum() > 0
        known = _e8m0_known_difference(x64)
        assert np.all(theirs[known] == 1)  # ml_dtypes < 0.7: code 1 (2**-126)
    assert_same_codes(ours[~known], theirs[~known], FORMATS[name], f"{src}->{name}")


@pytest.mark.parametrize("src", SOURCES)
@pytest.mark.parametrize("name", ML_NAMES)
def test_exhaustive_saturating_differs_from_ml_dtypes_only_on_overflow(src, name):
    fmt = FORMATS[name]
    x = _all_patterns(src)
    x64 = x.double().numpy()
    sat = _ours(x, name, saturate=True)
    theirs = _ml_codes(x, name)
    their_values = fmt.code_values.numpy()[theirs]
    # ml_dtypes returns inf or NaN for a non-NaN input exactly when it overflowed (or the
    # input was inf); for E8M0 zero and negatives are NaN in both and are not overflow.
    valid = x64 > 0 if fmt.is_scale_format else ~np.isnan(x64)
    overflow = valid & ~np.isfinite(their_values)
    assert overflow.any()
    known = _e8m0_known_difference(x64) if fmt.is_scale_format else np.zeros_like(overflow)
    rest = ~overflow & ~known
    assert_same_codes(sat[rest], theirs[rest], fmt, f"{src}->{name} saturating, in range")

    sign = np.where(np.signbit(x64[overflow]), 0x80, 0) if fmt.signed else 0
    expected = (fmt.max_code | sign).astype(np.uint8) if fmt.signed else fmt.max_code
    expected = np.broadcast_to(np.asarray(expected, dtype=np.uint8), overflow.sum()).copy()
    if fmt.nan_encoding is NanEncoding.NEGATIVE_ZERO:  # FNUZ: inf -> NaN even when saturating
        expected[np.isinf(x64[overflow])] = fmt.nan_code
    assert_same_codes(sat[overflow], expected, fmt, f"{src}->{name} saturating, overflow")


@pytest.mark.parametrize("saturate", [True, False])
@pytest.mark.parametrize("src", SOURCES)
@pytest.mark.parametrize("name", ALL_NAMES)
def test_exhaustive_matches_float64_model(src, name, saturate):
    x = _all_patterns(src)
    ours = _ours(x, name, saturate=saturate)
    expected = reference_round(x.float().numpy(), FORMATS[name], saturate=saturate)
    assert_same_codes(ours, expected, FORMATS[name], f"{src}->{name}", x.float().numpy())


@pytest.mark.parametrize("src", SOURCES)
def test_gaudi2_is_e4m3_rounding_then_the_240_limit(src):
    """No ml_dtypes type for Gaudi2: RNE on the E4M3FN grid (ml_dtypes), then +-240."""
    x = _all_patterns(src)
    x64 = x.double().numpy()
    grid = _ml_codes(x, "e4m3fn")  # RNE on the E4M3 grid, non-saturating
    grid_values = FORMATS["e4m3fn"].code_values.numpy()[grid]
    over = ~np.isnan(x64) & ~(np.abs(grid_values) <= 240.0)
    sign = np.where(np.signbit(x64), 0x80, 0).astype(np.uint8)
    gaudi = FORMATS["e4m3_gaudi2"]
    sat_expected = np.where(over, 0x77 | sign, grid).astype(np.uint8)  # 0x77 = 240
    nonsat_expected = np.where(over, 0x7F | sign, grid).astype(np.uint8)
    assert_same_codes(_ours(x, "e4m3_gaudi2", True), sat_expected, gaudi, "gaudi2 sat")
    assert_same_codes(_ours(x, "e4m3_gaudi2", False), nonsat_expected, gaudi, "gaudi2")
    # 248 is the tie between 240 (mantissa 111, odd) and 256: it rounds to 256 -> over.
    assert _emulate(np.array([247.9999847]), "e4m3_gaudi2", False).tolist() == [0x77]
    assert np.isnan(
        gaudi.code_values.numpy()[_emulate(np.array([248.0]), "e4m3_gaudi2", False)]
    ).all()


# -- the deliberate E8M0 difference, checked on every fp32 subnormal ------------------------


def test_e8m0_on_every_fp32_subnormal():
    bits = np.arange(1, 1 << 23, dtype=np.uint32)  # every positive fp32 subnormal
    y = bits.view(np.float32)
    y64 = y.astype(np.float64)
    ours = _emulate(y, "e8m0fnu", saturate=False)
    # float64 math: the two smallest scales are 2**-127 (code 0) and 2**-126 (code 1);
    # nearest of the two, ties (1.5 * 2**-127) up; anything below 2**-127 rounds up to it.
    nearest = np.where(np.abs(y64 - 2.0**-126) <= np.abs(y64 - 2.0**-127), 1, 0)
    assert np.array_equal(ours, nearest.astype(np.uint8))
    theirs = _ml_codes32(y, "e8m0fnu")
    differ = ours != theirs
    assert np.array_equal(differ, _e8m0_known_difference(y64))
    if _ml_dtypes_e8m0_rounds_up_below_2_pow_126():  # the mantissas in (2**22, 3 * 2**21)
        assert differ.sum() == (1 << 21) - 1


def test_float64_rounding_is_not_fp32_rounding_so_ops_take_fp32_only():
    x = 1.0625 + 2.0**-30  # just above the E4M3 tie between 1.0 and 1.125
    theirs = np.array([x]).astype(ml_dtypes.float8_e4m3fn).astype(np.float64)[0]
    # ml_dtypes < 0.7 went through fp32: fp32(x) is the tie 1.0625, which goes to even (1.0),
    # a double rounding of x; 0.7 rounds the float64 once (1.125). Either way a float64 input
    # has two plausible answers, which is why the ops refuse it.
    old_ml_dtypes = tuple(int(v) for v in ml_dtypes.__version__.split(".")[:2]) < (0, 7)
    assert theirs == (1.0 if old_ml_dtypes else 1.125)
    # A single rounding of x would give 1.125; the contract rounds fp32(x) once.
    assert _emulate(np.array([x]), "e4m3fn", True).tolist() == [0x38]  # 1.0
    with pytest.raises(fp8.Fp8TypeError, match="float32, bfloat16 or float16"):
        fp8.cast_to_fp8(torch.tensor([x], dtype=torch.float64), "e4m3fn", backend="reference")


# -- fp32 edge cases ------------------------------------------------------------------------


def _edge_values(name: str) -> np.ndarray:
    """Grid points, midpoints (ties, incl. max + half ulp) and their fp32 neighbours, the
    subnormal boundaries and the specials, both signs."""
    with np.errstate(over="ignore"):
        return _edge_values_unchecked(name)


def _edge_values_unchecked(name: str) -> np.ndarray:
    fmt = FORMATS[name]
    grid, _ = format_grid(fmt)
    mids = (grid[1:] + grid[:-1]) / 2
    assert np.array_equal(mids.astype(np.float32).astype(np.float64), mids)  # exact in fp32
    sub = fmt.min_subnormal
    pos = np.concatenate(
        [
            grid,
            mids,
            [sub, sub / 2, sub / 4, 1.5 * sub, fmt.min_normal, 2 * fmt.max],
            [np.finfo(np.float32).max, np.finfo(np.float32).smallest_subnormal],
            [np.finfo(np.float32).tiny, 2.0**-127, 1.5 * 2.0**-127, 0.0, np.inf, np.nan],
        ]
    ).astype(np.float32)
    up = np.nextafter(pos, np.float32(np.inf))
    down = np.nextafter(pos, np.float32(0))
    pos = np.concatenate([pos, up, down])
    return np.concatenate([pos, -pos])


@pytest.mark.parametrize("saturate", [True, False])
@pytest.mark.parametrize("name", ALL_NAMES)
def test_fp32_edge_cases_match_float64_model(name, saturate):
    y = _edge_values(name)
    ours = _emulate(y, name, saturate)
    assert_same_codes(ours, reference_round(y, FORMATS[name], saturate=saturate), FORMATS[name],
                      name, y)  # fmt: skip
    if name in ML_NAMES and not saturate:
        theirs = _ml_codes32(y, name)
        keep = ~_e8m0_known_difference(y.astype(np.float64))  # empty unless E8M0
        if name != "e8m0fnu":
            keep[:] = True
        assert_same_codes(ours[keep], theirs[keep], FORMATS[name], f"{name} vs ml_dtypes")


# Hand-derived from the format definitions (value, expected value or "nan"), per format.
_HAND = {
    "e4m3fn": [
        (464.0, 448.0, 448.0),  # tie between 448 (mantissa 110) and 480: to even, 448
        (464.00003, 448.0, "nan"),  # just above the tie: overflows
        (1.0625, 1.0, 1.0),  # tie between 1.0 and 1.125 -> even (1.0)
        (1.1875, 1.25, 1.25),  # tie between 1.125 and 1.25 -> even (1.25)
        (2.0**-10, 0.0, 0.0),  # half the smallest subnormal 2**-9: tie -> 0 (even)
        (2.0**-10 * (1 + 2**-23), 2.0**-9, 2.0**-9),  # just above half -> 2**-9
        (2.0**-9 * 1.5, 2.0**-8, 2.0**-8),  # tie between subnormals 1 and 2 -> 2 (even)
        (math.inf, 448.0, "nan"),
        (-math.inf, -448.0, "nan"),
    ],
    "e5m2": [
        (61440.0, 57344.0, math.inf),  # tie between 57344 (mantissa 11) and 65536: to 65536
        (61439.996, 57344.0, 57344.0),
        (2.0**-17, 0.0, 0.0),  # half of 2**-16
        (math.inf, 57344.0, math.inf),
        (-math.inf, -57344.0, -math.inf),
    ],
    "e4m3fnuz": [
        (248.0, 240.0, "nan"),  # tie between 240 (mantissa 111) and 256: to 256, overflow
        (247.99998, 240.0, 240.0),
        (2.0**-11, 0.0, 0.0),  # half of 2**-10
        (math.inf, "nan", "nan"),  # FNUZ: inf is NaN even when saturating
    ],
    "e5m2fnuz": [
        (61440.0, 57344.0, "nan"),
        (2.0**-18, 0.0, 0.0),
        (-math.inf, "nan", "nan"),
    ],
    "e4m3_gaudi2": [
        (248.0, 240.0, "nan"),
        (300.0, 240.0, "nan"),  # representable in E4M3FN (288/320 grid) but above 240
        (math.inf, 240.0, "nan"),
    ],
    "e8m0fnu": [
        (0.75, 1.0, 1.0),  # tie between 0.5 and 1: up
        (1.5, 2.0, 2.0),
        (1.4999999, 1.0, 1.0),
        (2.0**-140, 2.0**-127, 2.0**-127),  # below the smallest scale: up to it
        (1.5 * 2.0**127, 2.0**127, "nan"),  # tie above max: up to 2**128 -> overflow
        (0.0, "nan", "nan"),
        (-1.0, "nan", "nan"),
    ],
}


@pytest.mark.parametrize(
    ("name", "x", "sat_expected", "nonsat_expected"),
    [(n, *case) for n, cases in _HAND.items() for case in cases],
)
def test_hand_derived_edge_values(name, x, sat_expected, nonsat_expected):
    fmt = FORMATS[name]
    for saturate, expected in ((True, sat_expected), (False, nonsat_expected)):
        got = fmt.code_values.numpy()[_emulate(np.array([x]), name, saturate)].item()
        if expected == "nan":
            assert math.isnan(got), (x, saturate, got)
        else:
            assert got == expected, (x, saturate, got)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_negative_zero_rules(name):
    fmt = FORMATS[name]
    tiny = np.array([-0.0, -fmt.min_subnormal / 4], dtype=np.float32)
    codes = _emulate(tiny, name, True)
    if fmt.is_scale_format:
        assert np.isnan(fmt.code_values.numpy()[codes]).all()
    elif fmt.has_negative_zero:
        assert codes.tolist() == [0x80, 0x80]  # -0 kept
    else:
        assert codes.tolist() == [0, 0]  # FNUZ has no -0 (0x80 is NaN)


@pytest.mark.parametrize("saturate", [True, False])
@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_code_round_trips(name, saturate):
    fmt = FORMATS[name]
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    values = codes_to_float(codes, fmt)
    ok = ~values.isnan()
    again = round_to_codes(values[ok], fmt, saturate=saturate)
    if fmt.has_inf and saturate:  # the contract saturates inf inputs
        inf = values[ok].isinf()
        assert (again[inf] == (codes[ok][inf] & 0x80 | fmt.max_code)).all()
        ok_codes, again = codes[ok][~inf], again[~inf]
    else:
        ok_codes = codes[ok]
    assert torch.equal(again, ok_codes)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_random_fp32_sample_matches_float64_model(name):
    fmt = FORMATS[name]
    rng = np.random.default_rng(1234)
    any_bits = rng.integers(0, 2**32, size=1 << 18, dtype=np.uint64).astype(np.uint32)
    lo, hi = math.log2(fmt.min_subnormal) - 3, math.log2(fmt.max) + 2
    in_range = np.exp2(rng.uniform(lo, hi, size=1 << 18)) * rng.choice([-1, 1], size=1 << 18)
    with np.errstate(over="ignore"):  # E8M0's range passes fp32's: those become inf
        y = np.concatenate([any_bits.view(np.float32), in_range.astype(np.float32)])
    for saturate in (True, False):
        expected = reference_round(y, fmt, saturate=saturate)
        assert_same_codes(_emulate(y, name, saturate), expected, fmt, name, y)


# -- the scale: one fp32 multiply before the rounding -------------------------------------


@pytest.mark.parametrize("name", ["e4m3fn", "e5m2", "e4m3fnuz", "e4m3_gaudi2"])
def test_scale_is_one_fp32_multiply_then_one_rounding(name):
    fmt = FORMATS[name]
    s = np.float32(3.7)
    grid, _ = format_grid(fmt)
    ties = ((grid[1:] + grid[:-1]) / 2)[:-1]  # midpoints inside the range
    x0 = (ties / np.float64(s)).astype(np.float32)
    steps = np.arange(-3, 4)
    x = np.concatenate([x0 + np.float32(0)] + [_ulps(x0, k) for k in steps if k])
    y32 = x * s  # IEEE fp32 multiplication
    exact = x.astype(np.float64) * np.float64(s)  # exact: 24 x 24 bits fit float64
    expected = reference_round(y32, fmt, saturate=True)
    ours = codes_of(fp8.cast_to_fp8(torch.from_numpy(x), name, 3.7, backend="reference"))
    assert_same_codes(ours.numpy(), expected, fmt, f"{name} scale 3.7", x)
    also = round_to_codes(scaled_fp32(torch.from_numpy(x), 3.7), fmt)
    assert np.array_equal(also.numpy(), ours.numpy())
    # The test has teeth: somewhere fp32(x * s) is exactly a tie while x * s is not, so a
    # single rounding of the exact product would pick the other neighbour.
    on_tie = np.isin(y32.astype(np.float64), ties) & (exact != y32.astype(np.float64))
    assert on_tie.any()
    idx = np.searchsorted(grid, np.abs(y32[on_tie]).astype(np.float64), side="right") - 1
    lo, hi = grid[idx], grid[idx + 1]
    exact_nearest = np.where(np.abs(exact[on_tie]) > (lo + hi) / 2, hi, lo)
    ours_values = np.abs(fmt.code_values.numpy()[ours.numpy()[on_tie]])
    assert (ours_values != exact_nearest).any()


def _ulps(x: np.ndarray, k: int) -> np.ndarray:
    out = x.copy()
    direction = np.float32(np.inf if k > 0 else -np.inf)
    for _ in range(abs(k)):
        out = np.nextafter(out, direction)
    return out


def test_scale_tensor_is_converted_to_fp32_first():
    x = torch.tensor([1.0, 100.0, -7.25])
    s64 = torch.tensor(3.7, dtype=torch.float64)
    a = fp8.cast_to_fp8(x, "e4m3fn", s64, backend="reference")
    b = fp8.cast_to_fp8(x, "e4m3fn", float(np.float32(3.7)), backend="reference")
    assert torch.equal(codes_of(a), codes_of(b))


# -- stochastic rounding --------------------------------------------------------------------


def _stochastic_sample(name: str, rng: np.random.Generator, n: int) -> np.ndarray:
    fmt = FORMATS[name]
    lo, hi = math.log2(fmt.min_subnormal) - 2, math.log2(fmt.max) + 1
    y = np.exp2(rng.uniform(lo, hi, size=n)) * rng.choice([-1, 1], size=n)
    grid, _ = format_grid(fmt)
    extra = [grid, (grid[1:] + grid[:-1]) / 2, [0.0, np.inf, -np.inf, np.nan]]
    if fmt.is_scale_format:  # fp32 subnormals sit between E8M0's two smallest scales
        extra.append(np.linspace(2.0**-127, 2.0**-126, 33))
    with np.errstate(over="ignore"):
        return np.concatenate([y, *extra]).astype(np.float32)


@pytest.mark.parametrize("saturate", [True, False])
@pytest.mark.parametrize("name", ALL_NAMES)
def test_stochastic_explicit_bits_follow_the_rule(name, saturate):
    fmt = FORMATS[name]
    rng = np.random.default_rng(7)
    y = _stochastic_sample(name, rng, 1 << 15)
    r = rng.integers(0, 2**32, size=y.shape, dtype=np.int64)
    r[:8] = [0, 1, 2**31, 2**32 - 1, 0, 1, 2**31, 2**32 - 1]
    expected = reference_round(y, fmt, saturate=saturate, rand_bits=r)
    assert_same_codes(_emulate(y, name, saturate, r), expected, fmt, f"{name} int64 bits", y)
    # The same words as signed int32 (bits reinterpreted): same result.
    r32 = r.astype(np.uint32).view(np.int32)
    assert_same_codes(_emulate(y, name, saturate, r32), expected, fmt, f"{name} int32 bits", y)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_stochastic_threshold_is_strict(name):
    """hi iff f * 2**32 > r: r = f * 2**32 gives lo, r = f * 2**32 - 1 gives hi."""
    fmt = FORMATS[name]
    rng = np.random.default_rng(11)
    grid, _ = format_grid(fmt)
    # Values in the normal range, away from grid points: f has at most 23 fractional bits.
    y = np.exp2(rng.uniform(math.log2(fmt.min_normal), math.log2(fmt.max), 4096))
    y = y.astype(np.float32)
    a = y.astype(np.float64)
    i = np.searchsorted(grid, a, side="right") - 1
    lo, hi = grid[i], grid[i + 1]
    f32 = (a - lo) / (hi - lo) * 2.0**32
    keep = f32 >= 1
    y, lo, hi, f32 = y[keep], lo[keep], hi[keep], f32[keep]
    assert np.array_equal(f32, np.floor(f32))  # an integer: the threshold is exact
    at = _emulate(y, name, True, f32.astype(np.int64))
    below = _emulate(y, name, True, f32.astype(np.int64) - 1)
    values = fmt.code_values.numpy()
    assert np.array_equal(values[at], np.minimum(lo, fmt.max))
    assert np.array_equal(values[below], np.where(hi > fmt.max, fmt.max, hi))


@pytest.mark.parametrize("name", [n for n in ALL_NAMES if not FORMATS[n].exponent_only])
def test_stochastic_deep_below_the_smallest_subnormal(name):
    """|y| = min_subnormal * 2**-j * (1 + m/2**23), j = 1..44: the rounding shift d = 23 + j
    passes 32 (the emulator then compares without shifting r left) and its clamp at 56.
    Between 0 and min_subnormal, f = |y| / min_subnormal exactly, and the bits at and next
    to the threshold f * 2**32 (and random ones) must follow the float64 rule."""
    fmt = FORMATS[name]
    rng = np.random.default_rng(5)
    j = np.repeat(np.arange(1, 45), 64)
    mant = rng.integers(0, 2**23, size=j.shape)
    y = (fmt.min_subnormal * np.exp2(-j.astype(np.float64)) * (1 + mant / 2.0**23)).astype(
        np.float32
    )
    y = y[y > 0]
    t = y.astype(np.float64) / fmt.min_subnormal * 2.0**32  # f * 2**32, exact in float64
    for r in (np.floor(t), np.floor(t) - 1, np.ceil(t), np.ceil(t) + 1, np.zeros_like(t),
              rng.integers(0, 2**32, size=t.shape).astype(np.float64)):  # fmt: skip
        bits = np.clip(r, 0, 2**32 - 1).astype(np.int64)
        expected = reference_round(y, fmt, saturate=True, rand_bits=bits)
        assert_same_codes(_emulate(y, name, True, bits), expected, fmt, f"{name} deep", y)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_stochastic_gives_only_the_two_neighbours(name):
    fmt = FORMATS[name]
    rng = np.random.default_rng(3)
    grid, _ = format_grid(fmt)
    inside = grid[:-1] if fmt.is_scale_format else grid[1:-1]
    picks = rng.choice(len(inside) - 1, 16)
    lo, hi = inside[picks], inside[picks + 1]
    v = (lo + (hi - lo) * rng.uniform(0.05, 0.95, 16)).astype(np.float32)
    y = np.repeat(v, 512)
    r = rng.integers(0, 2**32, size=y.shape, dtype=np.int64)
    got = fmt.code_values.numpy()[_emulate(y, name, True, r)].reshape(16, 512)
    for row, l_, h_ in zip(got, lo, hi, strict=True):
        assert set(np.unique(row)) == {l_, h_}


@pytest.mark.parametrize("name", ["e4m3fn", "e5m2", "e4m3fnuz", "e8m0fnu"])
def test_stochastic_with_generator_is_unbiased(name):
    """Mean of N draws within z standard deviations of the exact value.

    Each element is ``hi`` with probability ``p = f`` (exact in the normal range) and ``lo``
    otherwise, independently, so the mean of N results has mean ``lo + p (hi - lo) = y``
    and standard deviation ``(hi - lo) sqrt(p (1 - p) / N)``. With z = 6 a correct
    implementation fails with probability about 2e-9 per value (normal tail; N is large).
    """
    fmt = FORMATS[name]
    grid, _ = format_grid(fmt)
    n, z = 200_000, 6.0
    for k, frac in enumerate((0.125, 0.3, 0.5, 0.9)):
        i = len(grid) // 2 + 3 * k
        lo, hi = grid[i], grid[i + 1]
        y = np.float32(lo + frac * (hi - lo))
        p = (float(y) - lo) / (hi - lo)
        x = torch.full((n,), float(y))
        g = torch.Generator().manual_seed(100 + k)
        q = fp8.cast_to_fp8(x, name, rounding="stochastic", generator=g, backend="reference")
        values = codes_to_float(codes_of(q), fmt).double()
        assert set(values.unique().tolist()) == {lo, hi}
        sd = (hi - lo) * math.sqrt(p * (1 - p) / n)
        assert abs(values.mean().item() - float(y)) <= z * sd


def test_stochastic_generator_is_reproducible():
    x = torch.linspace(-3, 3, 4097)
    runs = [
        fp8.cast_to_fp8(
            x, "e4m3fn", rounding="stochastic", generator=torch.Generator().manual_seed(s),
            backend="reference",
        ).view(torch.uint8)
        for s in (5, 5, 6)
    ]  # fmt: skip
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


# -- amax -----------------------------------------------------------------------------------


def test_amax_contract():
    assert amax(torch.tensor([1.0, -3.5, 2.0])).item() == 3.5
    assert amax(torch.tensor([1.0, -math.inf])).item() == math.inf
    assert math.isnan(amax(torch.tensor([1.0, math.nan, 1e30])).item())
    assert math.isnan(amax(torch.tensor([math.inf, math.nan])).item())
    empty = amax(torch.empty(0, 5))
    assert empty.item() == 0.0 and empty.dtype == torch.float32 and empty.dim() == 0
    bf = amax(torch.tensor([-2.5, 1.0], dtype=torch.bfloat16))
    assert bf.dtype == torch.float32 and bf.item() == 2.5
    assert fp8.compute_amax(torch.tensor([[0.0, -0.0]])).item() == 0.0


def test_round_to_codes_takes_fp32_only():
    with pytest.raises(TypeError, match="float32"):
        round_to_codes(torch.ones(3, dtype=torch.float64), FORMATS["e4m3fn"])
