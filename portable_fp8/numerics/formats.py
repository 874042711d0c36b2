"""FP8 encodings described as data.

A :class:`Format` says everything the emulator and the backends need to know about one
8-bit encoding: field widths, exponent bias, the largest finite value, how infinities and NaN
are encoded, whether there is a negative zero, and the torch dtype that stores it. No other
module hard-codes a format's constants; they read them from here.

Formats are looked up by a short name matching torch's dtype names (``"e4m3fn"``,
``"e5m2"``, ``"e4m3fnuz"``, ``"e5m2fnuz"``, ``"e8m0fnu"``), by Gaudi2's own name
(``"e4m3_gaudi2"``), or by the torch dtype itself.

Sources for the constants: the OCP 8-bit Floating Point Specification (OFP8) rev 1.0 (E4M3
and E5M2), the OCP Microscaling Formats (MX) Specification v1.0 (E8M0), Graphcore/AMD's
"FNUZ" variants as implemented by ml_dtypes and torch, and Intel Gaudi2's documentation of
its E4M3 range (+-240).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from functools import cached_property

import torch

from ..errors import UnknownFormatError

__all__ = [
    "NanEncoding",
    "Format",
    "E4M3FN",
    "E5M2",
    "E4M3FNUZ",
    "E5M2FNUZ",
    "E4M3_GAUDI2",
    "E8M0FNU",
    "FORMATS",
    "get_format",
    "element_formats",
]


class NanEncoding(enum.Enum):
    """How an encoding spells NaN (and whether it has infinities)."""

    #: Only S.1111.111 is NaN; no infinities (OCP E4M3).
    ALL_ONES = "all_ones"
    #: IEEE-754 style: exponent all ones and mantissa 0 is +-inf, any other mantissa is NaN.
    IEEE = "ieee"
    #: The code 0x80 (what would be negative zero) is the single NaN; no inf, no -0 (FNUZ).
    NEGATIVE_ZERO = "negative_zero"
    #: Unsigned exponent-only scale: 0xFF is NaN (OCP MX E8M0).
    EXPONENT_ALL_ONES = "exponent_all_ones"


@dataclass(frozen=True)
class Format:
    """One FP8 encoding.

    ``max`` is the largest finite magnitude the format may produce. For every format but
    Gaudi2's E4M3 it is the largest finite value the bit layout can spell; Gaudi2's E4M3 uses
    E4M3FN's layout but its hardware range stops at 240, so ``max`` is 240 there.
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    bias: int
    max: float
    nan_encoding: NanEncoding
    signed: bool = True
    #: Name of the torch dtype that stores the codes (absent on older torch: stored as uint8).
    torch_dtype_name: str | None = None
    description: str = field(default="", compare=False)

    @property
    def has_inf(self) -> bool:
        return self.nan_encoding is NanEncoding.IEEE

    @property
    def has_negative_zero(self) -> bool:
        return self.signed and self.nan_encoding in (NanEncoding.ALL_ONES, NanEncoding.IEEE)

    @property
    def has_zero(self) -> bool:
        return self.nan_encoding is not NanEncoding.EXPONENT_ALL_ONES

    @property
    def is_scale_format(self) -> bool:
        """True for exponent-only block-scale formats (E8M0): never an element format."""
        return self.nan_encoding is NanEncoding.EXPONENT_ALL_ONES

    @property
    def min_normal_exponent(self) -> int:
        """Unbiased exponent of the smallest normal number (1 - bias; E8M0 has no subnormals)."""
        return -self.bias if self.is_scale_format else 1 - self.bias

    @property
    def min_normal(self) -> float:
        return 2.0**self.min_normal_exponent

    @property
    def min_subnormal(self) -> float:
        """Smallest positive value (for E8M0, which has no subnormals, the smallest scale)."""
        if self.is_scale_format:
            return self.min_normal
        return 2.0 ** (self.min_normal_exponent - self.mantissa_bits)

    @property
    def nan_code(self) -> int:
        """The canonical (positive, where signed) NaN code."""
        if self.nan_encoding is NanEncoding.NEGATIVE_ZERO:
            return 0x80
        if self.nan_encoding is NanEncoding.IEEE:
            return 0x7F
        if self.nan_encoding is NanEncoding.EXPONENT_ALL_ONES:
            return 0xFF
        return 0x7F

    @property
    def inf_code(self) -> int | None:
        """Code of +inf, or None when the format has no infinity."""
        return (0x7F >> self.mantissa_bits) << self.mantissa_bits if self.has_inf else None

    @property
    def torch_dtype(self) -> torch.dtype:
        """The dtype that stores this format's codes (uint8 where torch lacks the dtype)."""
        dtype = getattr(torch, self.torch_dtype_name or "", None)
        return dtype if isinstance(dtype, torch.dtype) else torch.uint8

    @property
    def max_code(self) -> int:
        """Code of +max."""
        return int((self.code_values == self.max).nonzero()[0, 0])

    @cached_property
    def code_values(self) -> torch.Tensor:
        """float64 tensor of the value of each of the 256 codes (NaN codes give NaN).

        This is the decoding table; it is derived from the fields above by formula.
        """
        codes = torch.arange(256, dtype=torch.int64)
        m = self.mantissa_bits
        if self.signed:
            sign = torch.where(codes >= 128, -1.0, 1.0).double()
            mag = codes & 0x7F
        else:
            sign = torch.ones(256, dtype=torch.float64)
            mag = codes
        exp_field = mag >> m
        mant = (mag & ((1 << m) - 1)).double()
        if self.is_scale_format:
            value = torch.pow(2.0, (exp_field - self.bias).double())
        else:
            normal = torch.pow(2.0, (exp_field - self.bias).double()) * (1.0 + mant / 2**m)
            subnormal = 2.0 ** (self.min_normal_exponent - m) * mant
            value = sign * torch.where(exp_field == 0, subnormal, normal)
        nan = torch.zeros(256, dtype=torch.bool)
        exp_all_ones = exp_field == (1 << self.exponent_bits) - 1
        if self.nan_encoding is NanEncoding.ALL_ONES:
            nan = mag == 0x7F
        elif self.nan_encoding is NanEncoding.IEEE:
            nan = exp_all_ones & (mant != 0)
            value = torch.where(exp_all_ones & (mant == 0), sign * torch.inf, value)
        elif self.nan_encoding is NanEncoding.NEGATIVE_ZERO:
            nan = codes == 0x80
        else:
            nan = codes == 0xFF
        value = torch.where(nan, torch.nan, value)
        # Codes beyond a range-limited format's max (Gaudi2 E4M3 above 240) never occur.
        out_of_range = value.abs() > self.max
        return torch.where(out_of_range & ~value.isinf(), torch.nan, value)

    def __repr__(self) -> str:
        return f"Format({self.name!r}, max={self.max:g})"


E4M3FN = Format(
    "e4m3fn",
    4,
    3,
    7,
    448.0,
    NanEncoding.ALL_ONES,
    torch_dtype_name="float8_e4m3fn",
    description="OCP E4M3: no inf, NaN = S.1111.111, max 448",
)
E5M2 = Format(
    "e5m2",
    5,
    2,
    15,
    57344.0,
    NanEncoding.IEEE,
    torch_dtype_name="float8_e5m2",
    description="OCP E5M2: IEEE-style inf and NaN, max 57344",
)
E4M3FNUZ = Format(
    "e4m3fnuz",
    4,
    3,
    8,
    240.0,
    NanEncoding.NEGATIVE_ZERO,
    torch_dtype_name="float8_e4m3fnuz",
    description="FNUZ E4M3: bias 8, one NaN at 0x80, no -0, no inf, max 240",
)
E5M2FNUZ = Format(
    "e5m2fnuz",
    5,
    2,
    16,
    57344.0,
    NanEncoding.NEGATIVE_ZERO,
    torch_dtype_name="float8_e5m2fnuz",
    description="FNUZ E5M2: bias 16, one NaN at 0x80, no -0, no inf, max 57344",
)
E4M3_GAUDI2 = Format(
    "e4m3_gaudi2",
    4,
    3,
    7,
    240.0,
    NanEncoding.ALL_ONES,
    torch_dtype_name="float8_e4m3fn",
    description="Gaudi2 E4M3: E4M3FN codes, range limited to +-240 (saturates at 240)",
)
E8M0FNU = Format(
    "e8m0fnu",
    8,
    0,
    127,
    2.0**127,
    NanEncoding.EXPONENT_ALL_ONES,
    signed=False,
    torch_dtype_name="float8_e8m0fnu",
    description="OCP MX E8M0 block scale: 2^(e-127), 0xFF = NaN, no sign, no zero",
)

#: Every known format by name.
FORMATS: dict[str, Format] = {
    f.name: f for f in (E4M3FN, E5M2, E4M3FNUZ, E5M2FNUZ, E4M3_GAUDI2, E8M0FNU)
}


def element_formats() -> tuple[Format, ...]:
    """Formats that tensor elements may be cast to (everything but block-scale formats)."""
    return tuple(f for f in FORMATS.values() if not f.is_scale_format)


def get_format(spec: str | torch.dtype | Format) -> Format:
    """Return the :class:`Format` named by ``spec`` (a name, a torch dtype or a Format).

    A torch dtype maps to the format it stores by default (``torch.float8_e4m3fn`` is OCP
    E4M3FN, never Gaudi2's range-limited variant, which must be asked for by name).
    """
    if isinstance(spec, Format):
        return spec
    if isinstance(spec, torch.dtype):
        for fmt in FORMATS.values():
            if fmt is not E4M3_GAUDI2 and getattr(torch, fmt.torch_dtype_name, None) == spec:
                return fmt
        raise UnknownFormatError(f"{spec} is not an FP8 dtype; known formats: {', '.join(FORMATS)}")
    if isinstance(spec, str):
        key = spec.lower().removeprefix("torch.").removeprefix("float8_")
        if key in FORMATS:
            return FORMATS[key]
        raise UnknownFormatError(
            f"unknown FP8 format {spec!r}; known formats: {', '.join(FORMATS)}"
        )
    raise UnknownFormatError(
        f"an FP8 format is named by a string or a torch dtype, not {type(spec).__name__}"
    )
