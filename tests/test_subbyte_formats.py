"""Sub-byte formats (OCP MX E2M1, E2M3, E3M2) and E8M0 against ml_dtypes, bit-exact.

Every bf16 and every fp16 bit pattern is cast with the emulator and with ml_dtypes; every
code is decoded by both. NaN inputs are left out for the formats without NaN, which the
emulator refuses (ml_dtypes maps them to a zero; docs/contract.md says why we do not).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch

from portable_fp8.errors import Fp8TypeError, Fp8ValueError
from portable_fp8.numerics.cast import codes_to_float, round_to_codes
from portable_fp8.numerics.formats import (
    E2M1FN,
    E2M3FN,
    E3M2FN,
    E8M0FNU,
    FORMATS,
    SUBBYTE_FORMATS,
    get_format,
)
from portable_fp8.numerics.packing import pack_fp4, pack_fp6, unpack_fp4, unpack_fp6

ORACLES = [
    (E2M1FN, ml_dtypes.float4_e2m1fn),
    (E2M3FN, ml_dtypes.float6_e2m3fn),
    (E3M2FN, ml_dtypes.float6_e3m2fn),
    (E8M0FNU, ml_dtypes.float8_e8m0fnu),
]
IDS = [f.name for f, _ in ORACLES]


def _all_patterns(dtype: torch.dtype) -> torch.Tensor:
    """All 65,536 bf16 or fp16 values, widened to fp32 exactly."""
    return torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(dtype).float()


@pytest.mark.parametrize(("fmt", "np_dtype"), ORACLES, ids=IDS)
@pytest.mark.parametrize("src", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_cast_every_16bit_pattern_matches_ml_dtypes(fmt, np_dtype, src) -> None:
    y = _all_patterns(src)
    if not fmt.has_nan:
        y = y[~y.isnan()]
    want = y.numpy().astype(np_dtype).view(np.uint8)
    # ml_dtypes' E8M0 cast is the non-saturating one (overflow -> 0xFF, NaN); the formats
    # without NaN saturate whatever ``saturate`` says.
    for saturate in (True, False) if not fmt.has_nan else (False,):
        got = round_to_codes(y, fmt, saturate=saturate).numpy()
        np.testing.assert_array_equal(got, want)
    assert want.size > 60000


@pytest.mark.parametrize(("fmt", "np_dtype"), ORACLES, ids=IDS)
def test_decode_every_code_matches_ml_dtypes(fmt, np_dtype) -> None:
    codes = torch.arange(fmt.code_count, dtype=torch.uint8)
    want = codes.numpy().view(np_dtype).astype(np.float32)
    got = codes_to_float(codes, fmt).numpy()
    np.testing.assert_array_equal(got, want)  # NaN positions compare equal too
    assert float(np.nanmax(want)) == fmt.max


@pytest.mark.parametrize("fmt", list(SUBBYTE_FORMATS.values()), ids=list(SUBBYTE_FORMATS))
def test_specials_saturate_and_nan_is_refused(fmt) -> None:
    y = torch.tensor([np.inf, -np.inf, 1e30, -1e30], dtype=torch.float32)
    for saturate in (True, False):
        got = codes_to_float(round_to_codes(y, fmt, saturate=saturate), fmt)
        assert got.tolist() == [fmt.max, -fmt.max, fmt.max, -fmt.max]
    with pytest.raises(Fp8ValueError):
        round_to_codes(torch.tensor([1.0, float("nan")]), fmt)
    with pytest.raises(Fp8ValueError):
        codes_to_float(torch.tensor([fmt.code_count], dtype=torch.uint8), fmt)


def test_subbyte_formats_are_kept_out_of_formats() -> None:
    assert not set(SUBBYTE_FORMATS) & set(FORMATS)
    assert get_format("float4_e2m1fn") is E2M1FN
    assert get_format("float6_e3m2fn") is E3M2FN
    assert get_format("e2m3fn") is E2M3FN


@pytest.mark.parametrize("fmt", list(SUBBYTE_FORMATS.values()), ids=list(SUBBYTE_FORMATS))
def test_stochastic_rounding_is_exact_over_all_random_words(fmt) -> None:
    """With k random bits (the top k of the 32-bit word, the rest zero), a value a fraction
    ``f = j / 2**k`` of the way from code ``lo`` to code ``hi`` rounds up for exactly
    ``j`` of the ``2**k`` words; a value that is a code never moves."""
    k = 8
    words = torch.arange(1 << k, dtype=torch.int64) << (32 - k)
    values = codes_to_float(torch.arange(fmt.code_count, dtype=torch.uint8), fmt)
    pos = values[: fmt.code_count // 2]  # positive codes in increasing order
    for code, v in enumerate(pos.tolist()):
        exact = torch.full((1 << k,), v, dtype=torch.float32)
        got = round_to_codes(exact, fmt, rand_bits=words)
        assert bool((got == code).all())
    for lo in range(len(pos) - 1):
        a, b = float(pos[lo]), float(pos[lo + 1])
        for j in (1, 3, 64, 128, 255):
            v = a + (b - a) * j / (1 << k)  # exact in fp32: at most 3 + 8 significant bits
            y = torch.full((1 << k,), v, dtype=torch.float32)
            assert float(y[0]) == v
            got = round_to_codes(y, fmt, rand_bits=words)
            assert bool(((got == lo) | (got == lo + 1)).all())
            assert int((got == lo + 1).sum()) == j


def test_pack_fp4_round_trip_and_nibble_order() -> None:
    codes = torch.arange(16, dtype=torch.uint8).repeat(3).reshape(2, 24)
    packed = pack_fp4(codes)
    assert packed.shape == (2, 12)
    assert torch.equal(unpack_fp4(packed), codes)
    # element 2i in the low nibble (ONNX FLOAT4E2M1 and torch float4_e2m1fn_x2 order)
    assert int(pack_fp4(torch.tensor([0x1, 0x2], dtype=torch.uint8))[0]) == 0x21
    with pytest.raises(Fp8ValueError):
        pack_fp4(torch.zeros(3, dtype=torch.uint8))
    with pytest.raises(Fp8ValueError):
        pack_fp4(torch.tensor([16, 0], dtype=torch.uint8))
    with pytest.raises(Fp8TypeError):
        pack_fp4(torch.zeros(2, dtype=torch.int32))


def test_pack_fp6_round_trip_and_bit_order() -> None:
    codes = torch.arange(64, dtype=torch.uint8).reshape(4, 16)
    packed = pack_fp6(codes)
    assert packed.shape == (4, 12)
    assert torch.equal(unpack_fp6(packed), codes)
    c = [0x3F, 0x01, 0x20, 0x15]
    word = c[0] | c[1] << 6 | c[2] << 12 | c[3] << 18
    got = pack_fp6(torch.tensor(c, dtype=torch.uint8)).tolist()
    assert got == [word & 0xFF, (word >> 8) & 0xFF, word >> 16]
    with pytest.raises(Fp8ValueError):
        pack_fp6(torch.zeros(6, dtype=torch.uint8))
    with pytest.raises(Fp8ValueError):
        unpack_fp6(torch.zeros(4, dtype=torch.uint8))
    with pytest.raises(Fp8ValueError):
        pack_fp6(torch.tensor([64, 0, 0, 0], dtype=torch.uint8))
