"""Formats as data: constants from the specifications, decode tables against ml_dtypes.

Constants are checked against the OCP OFP8 rev 1.0 / OCP MX v1.0 definitions (written out
below as formulas from the field widths and bias) and against ``ml_dtypes.finfo``; the
256-entry decode table against ml_dtypes' own decoding of every code.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import torch

from portable_fp8.errors import Fp8ValueError, UnknownFormatError
from portable_fp8.numerics.cast import round_to_codes
from portable_fp8.numerics.formats import (
    E4M3_GAUDI2,
    E4M3FN,
    E8M0FNU,
    FORMATS,
    Format,
    NanEncoding,
    element_formats,
    get_format,
)
from portable_fp8.numerics.granularity import GRANULARITIES, Granularity

ML_DTYPES_FORMATS = ["e4m3fn", "e5m2", "e4m3fnuz", "e5m2fnuz", "e8m0fnu"]


def _ml_dtype(name: str):
    return getattr(ml_dtypes, f"float8_{name}")


@pytest.mark.parametrize("name", ML_DTYPES_FORMATS)
def test_decode_table_matches_ml_dtypes(name):
    fmt = FORMATS[name]
    ours = fmt.code_values.numpy()
    theirs = np.arange(256, dtype=np.uint8).view(_ml_dtype(name)).astype(np.float64)
    assert np.array_equal(np.isnan(ours), np.isnan(theirs))
    ok = ~np.isnan(ours)
    assert np.array_equal(ours[ok], theirs[ok])
    # Signed zeros too: -0 exists exactly where the format has a negative zero.
    assert np.array_equal(np.signbit(ours[ok]), np.signbit(theirs[ok]))


@pytest.mark.parametrize("name", ML_DTYPES_FORMATS)
def test_constants_match_ml_dtypes_finfo(name):
    fmt = FORMATS[name]
    info = ml_dtypes.finfo(_ml_dtype(name))
    assert fmt.max == float(info.max)
    assert fmt.min_normal == float(info.tiny)
    assert fmt.min_subnormal == float(info.smallest_subnormal)


@pytest.mark.parametrize(
    ("name", "max_", "has_inf", "neg_zero", "nan_codes"),
    [
        # OFP8 E4M3: max = 1.75 * 2**(15 - 7) = 448; NaN is S.1111.111.
        ("e4m3fn", 1.75 * 2**8, False, True, {0x7F, 0xFF}),
        # OFP8 E5M2: max = 1.75 * 2**(30 - 15); exponent 11111 with mantissa != 0 is NaN.
        ("e5m2", 1.75 * 2**15, True, True, {0x7D, 0x7E, 0x7F, 0xFD, 0xFE, 0xFF}),
        # FNUZ: bias one larger, 0x80 the only NaN, all other codes finite.
        ("e4m3fnuz", 1.875 * 2 ** (15 - 8), False, False, {0x80}),
        ("e5m2fnuz", 1.75 * 2 ** (31 - 16), False, False, {0x80}),
        # Gaudi2: E4M3FN layout, range limited to 240; codes beyond it never occur.
        ("e4m3_gaudi2", 240.0, False, True, {c for c in range(256) if c & 0x7F > 0x77}),
        # OCP MX E8M0: 2**(e - 127), 0xFF NaN.
        ("e8m0fnu", 2.0**127, False, False, {0xFF}),
    ],
)
def test_format_constants_from_spec(name, max_, has_inf, neg_zero, nan_codes):
    fmt = FORMATS[name]
    assert fmt.max == max_
    assert fmt.has_inf is has_inf
    assert fmt.has_negative_zero is neg_zero
    table = fmt.code_values
    assert {int(c) for c in torch.nonzero(table.isnan()).reshape(-1)} == nan_codes
    assert fmt.nan_code in nan_codes
    assert table[fmt.max_code].item() == fmt.max
    # max_code is the largest code of a finite non-negative value.
    finite_codes = [c for c in range(128 if fmt.signed else 256) if table[c].isfinite()]
    assert fmt.max_code == max(finite_codes)
    if has_inf:
        assert table[fmt.inf_code].item() == math.inf
        assert table[fmt.inf_code | 0x80].item() == -math.inf
    else:
        assert fmt.inf_code is None
        assert not table.isinf().any()


@pytest.mark.parametrize("fmt", element_formats(), ids=lambda f: f.name)
def test_subnormal_and_normal_limits_from_fields(fmt):
    # Smallest normal 2**(1 - bias); smallest subnormal 2**(1 - bias - mantissa_bits).
    assert fmt.min_normal == 2.0 ** (1 - fmt.bias)
    assert fmt.min_subnormal == 2.0 ** (1 - fmt.bias - fmt.mantissa_bits)
    table = fmt.code_values
    assert table[1].item() == fmt.min_subnormal
    assert table[1 << fmt.mantissa_bits].item() == fmt.min_normal


def test_e8m0_has_no_zero_and_no_sign():
    fmt = FORMATS["e8m0fnu"]
    assert fmt.is_scale_format and not fmt.has_zero and not fmt.signed
    table = fmt.code_values
    assert table[0].item() == 2.0**-127
    assert table[127].item() == 1.0
    assert table[254].item() == 2.0**127
    finite = table[~table.isnan()]
    assert (finite > 0).all()
    assert fmt not in element_formats()


def test_gaudi2_table_is_e4m3fn_limited_to_240():
    g, fn = E4M3_GAUDI2.code_values, E4M3FN.code_values
    within = fn.abs() <= 240
    assert torch.equal(g[within], fn[within])
    assert g[~within].isnan().all()
    assert E4M3_GAUDI2.max_code == 0x77
    assert E4M3_GAUDI2.torch_dtype == torch.float8_e4m3fn


def test_fnuz_and_ocp_nan_encodings():
    assert FORMATS["e4m3fn"].nan_encoding is NanEncoding.ALL_ONES
    assert FORMATS["e5m2"].nan_encoding is NanEncoding.IEEE
    assert FORMATS["e4m3fnuz"].nan_encoding is NanEncoding.NEGATIVE_ZERO
    assert FORMATS["e8m0fnu"].nan_encoding is NanEncoding.EXPONENT_ALL_ONES


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_get_format_by_name_dtype_and_object(name):
    fmt = FORMATS[name]
    assert get_format(name) is fmt
    assert get_format(name.upper()) is fmt
    assert get_format(fmt) is fmt
    if fmt is not E4M3_GAUDI2:
        assert get_format(fmt.torch_dtype) is fmt
        assert get_format(f"float8_{name}") is fmt
        assert get_format(f"torch.float8_{name}") is fmt


def test_dtype_maps_to_ocp_e4m3fn_not_gaudi2():
    assert get_format(torch.float8_e4m3fn) is E4M3FN


@pytest.mark.parametrize("bad", ["e4m3", "fp8", "", "e3m4"])
def test_unknown_format_name_lists_known(bad):
    with pytest.raises(UnknownFormatError) as info:
        get_format(bad)
    assert isinstance(info.value, Fp8ValueError)
    for name in FORMATS:
        assert name in str(info.value)


def test_unknown_format_dtype_and_type():
    with pytest.raises(UnknownFormatError, match="not an FP8 dtype"):
        get_format(torch.float16)
    with pytest.raises(UnknownFormatError, match="int"):
        get_format(3)


# -- sub-byte formats and format-derived code constants --------------------------------------

#: OCP MX E2M1 as test data only (no shipped format uses it yet): 4 bits, bias 1, no NaN
#: and no inf, stored two codes per byte.
_E2M1 = Format(
    "e2m1_test",
    2,
    1,
    1,
    6.0,
    NanEncoding.NONE,
    bits=4,
    packing="2x4",
)


def test_a_4_bit_format_without_nan_has_the_e2m1_code_table():
    table = _E2M1.code_values
    assert _E2M1.code_count == 16 and table.shape == (16,)
    assert _E2M1.sign_bit == 0x8 and _E2M1.magnitude_mask == 0x7
    positive = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]  # OCP MX v1.0, table 5
    assert table[:8].tolist() == positive
    assert table[8:].tolist() == [-v for v in positive]
    assert torch.signbit(table[8])  # code 0x8 is -0
    assert not table.isnan().any() and not table.isinf().any()
    assert _E2M1.nan_code is None and _E2M1.inf_code is None and not _E2M1.has_nan
    assert _E2M1.has_negative_zero and _E2M1.max_code == 0x7
    assert _E2M1.torch_dtype == torch.uint8  # packed: stored as bytes
    assert _E2M1.min_subnormal == 0.5 and _E2M1.min_normal == 1.0


def test_nan_cast_into_a_format_without_nan_is_refused_not_guessed():
    with pytest.raises(Fp8ValueError, match="e2m1_test"):
        round_to_codes(torch.tensor([1.0, float("nan")]), _E2M1)


@pytest.mark.parametrize("fmt", list(FORMATS.values()), ids=lambda f: f.name)
def test_code_constants_derive_from_the_bit_width(fmt):
    assert fmt.bits == 8 and fmt.packing == "byte" and fmt.code_count == 256
    assert fmt.sign_bit == (0x80 if fmt.signed else 0)
    nan = fmt.code_values.isnan()
    assert nan[fmt.nan_code]
    if fmt.inf_code is not None:
        assert fmt.code_values[fmt.inf_code] == math.inf
        assert fmt.code_values[fmt.inf_code | fmt.sign_bit] == -math.inf


def test_element_and_scale_only_formats():
    assert not E8M0FNU.element and E8M0FNU.is_scale_format
    assert all(f.element for f in element_formats())
    assert E8M0FNU not in element_formats()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"bits": 7}, r"bits=7 but sign \+ exponent \+ mantissa fields are 8"),
     ({"packing": "3x3"}, r"packing '3x3'; known: byte, 2x4")],
)  # fmt: skip
def test_inconsistent_format_data_is_refused(kwargs, match):
    with pytest.raises(Fp8ValueError, match=match):
        Format("bad", 4, 3, 7, 448.0, NanEncoding.ALL_ONES, **kwargs)


def test_a_granularity_may_store_its_scales_in_any_format():
    assert GRANULARITIES["mx_1x32"].scale_format == "e8m0fnu"
    g = Granularity("nv_1x16", 1, 16, scale_format="e4m3fn")  # E4M3 block scales
    assert g.transposed().scale_format == "e4m3fn" and g.transposed().rows == 16
    with pytest.raises(Fp8ValueError, match=r"unknown scale_format 'fp4'"):
        Granularity("bad", 1, 16, scale_format="fp4")
