"""FP8 encodings described as data.

A :class:`Format` says everything the emulator and the backends need to know about one
low-precision encoding: its bit width and how codes are packed into storage bytes, field
widths, exponent bias, the largest finite value, how infinities and NaN are encoded (or that
there are none), whether there is a negative zero, whether it may hold tensor elements or
only block scales, and the torch dtype that stores it. No other module hard-codes a
format's constants (code count, sign bit, NaN codes); they read them from here, so adding a
format is data plus tests.

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
import math
from dataclasses import dataclass, field
from functools import cached_property

import torch

from ..errors import Fp8ValueError, UnknownFormatError

__all__ = [
    "NanEncoding",
    "PACKINGS",
    "Format",
    "E4M3FN",
    "E5M2",
    "E4M3FNUZ",
    "E5M2FNUZ",
    "E4M3_GAUDI2",
    "E8M0FNU",
    "E2M1FN",
    "E2M3FN",
    "E3M2FN",
    "FORMATS",
    "SUBBYTE_FORMATS",
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
    #: No NaN and no infinity: every code is a finite value (OCP MX's E2M1, E2M3, E3M2). Casts
    #: into them saturate (overflow and +-inf become +-max) and refuse NaN inputs
    #: (docs/contract.md, "Sub-byte element formats").
    NONE = "none"


#: How codes are laid out in storage bytes (``Format.packing``).
PACKINGS: dict[str, str] = {
    "byte": "one code per storage byte (the code is the byte)",
    "2x4": "two 4-bit codes per byte, the first (lower index) in the low nibble",
}


@dataclass(frozen=True)
class Format:
    """One low-precision encoding (every shipped one is 8 bits wide).

    ``max`` is the largest finite magnitude the format may produce. For every format but
    Gaudi2's E4M3 it is the largest finite value the bit layout can spell; Gaudi2's E4M3 uses
    E4M3FN's layout but its hardware range stops at 240, so ``max`` is 240 there.

    ``bits`` is the code width (sign, exponent and mantissa fields, ``1 + e + m`` when signed,
    ``e + m`` otherwise); there are ``2**bits`` codes, and the sign is the top bit.
    ``packing`` names how codes sit in storage bytes (:data:`PACKINGS`): ``"byte"`` stores one
    code per byte (in ``torch_dtype`` or uint8); packed formats are stored as uint8.
    ``element``: tensor elements may be cast to it (False for scale-only formats such as
    E8M0). Any format, element or not, may serve as a block-scale format
    (``Granularity.scale_format``).
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
    bits: int = 8
    packing: str = "byte"
    element: bool = True

    def __post_init__(self) -> None:
        width = int(self.signed) + self.exponent_bits + self.mantissa_bits
        if width != self.bits:
            raise Fp8ValueError(
                f"format {self.name}: bits={self.bits} but sign + exponent + mantissa fields "
                f"are {width} bits"
            )
        if self.packing not in PACKINGS:
            raise Fp8ValueError(
                f"format {self.name}: packing {self.packing!r}; known: {', '.join(PACKINGS)}"
            )

    @property
    def code_count(self) -> int:
        """Number of codes, ``2**bits``."""
        return 1 << self.bits

    @property
    def sign_bit(self) -> int:
        """The sign bit's mask in a code (0 for unsigned formats)."""
        return 1 << (self.bits - 1) if self.signed else 0

    @property
    def magnitude_mask(self) -> int:
        """Mask of the exponent and mantissa fields (every bit but the sign)."""
        return (1 << (self.bits - int(self.signed))) - 1

    @property
    def exponent_only(self) -> bool:
        """An exponent-only encoding (E8M0): powers of two, no zero, no subnormals."""
        return self.nan_encoding is NanEncoding.EXPONENT_ALL_ONES

    @property
    def has_inf(self) -> bool:
        return self.nan_encoding is NanEncoding.IEEE

    @property
    def has_nan(self) -> bool:
        return self.nan_encoding is not NanEncoding.NONE

    @property
    def has_negative_zero(self) -> bool:
        return self.signed and self.nan_encoding in (
            NanEncoding.ALL_ONES,
            NanEncoding.IEEE,
            NanEncoding.NONE,
        )

    @property
    def has_zero(self) -> bool:
        return not self.exponent_only

    @property
    def is_scale_format(self) -> bool:
        """True for scale-only formats (``not element``, e.g. E8M0): never an element format."""
        return not self.element

    @property
    def min_normal_exponent(self) -> int:
        """Unbiased exponent of the smallest normal number (1 - bias; E8M0 has no subnormals)."""
        return -self.bias if self.exponent_only else 1 - self.bias

    @property
    def min_normal(self) -> float:
        return 2.0**self.min_normal_exponent

    @property
    def min_subnormal(self) -> float:
        """Smallest positive value (for E8M0, which has no subnormals, the smallest scale)."""
        if self.exponent_only:
            return self.min_normal
        return 2.0 ** (self.min_normal_exponent - self.mantissa_bits)

    @property
    def nan_code(self) -> int | None:
        """The canonical (positive, where signed) NaN code; None for formats without NaN."""
        if self.nan_encoding is NanEncoding.NONE:
            return None
        if self.nan_encoding is NanEncoding.NEGATIVE_ZERO:
            return self.sign_bit
        # ALL_ONES and IEEE: magnitude all ones; EXPONENT_ALL_ONES: every (unsigned) bit.
        return self.magnitude_mask

    @property
    def inf_code(self) -> int | None:
        """Code of +inf, or None when the format has no infinity."""
        m = self.mantissa_bits
        return (self.magnitude_mask >> m) << m if self.has_inf else None

    @property
    def torch_dtype(self) -> torch.dtype:
        """The dtype that stores this format's codes (uint8 where torch lacks the dtype, and
        for packed formats)."""
        if self.packing != "byte":
            return torch.uint8
        dtype = getattr(torch, self.torch_dtype_name or "", None)
        return dtype if isinstance(dtype, torch.dtype) else torch.uint8

    @property
    def overflow_boundary(self) -> float:
        """``max`` plus half the step above it, ``2**(floor(log2 max) - mantissa_bits)``: a
        magnitude beyond it rounds past ``max`` (overflows); one below it rounds to ``max``
        at most. Whether the tie exactly at it overflows is :attr:`overflows_at_boundary`."""
        return self.max + 2.0 ** (math.floor(math.log2(self.max)) - self.mantissa_bits) / 2

    @property
    def overflows_at_boundary(self) -> bool:
        """True when a magnitude exactly at :attr:`overflow_boundary` rounds past ``max``
        under round-to-nearest-even: the tie goes to the neighbour with the even code, and
        the neighbour above ``max`` (the next code, or the power of two past the top
        binade) has the even one exactly when ``max``'s code is odd (E5M2's 0x7B: the tie
        overflows; E4M3FN's 0x7E: it rounds to ``max``)."""
        return bool(self.max_code & 1)

    @property
    def max_code(self) -> int:
        """Code of +max."""
        return int((self.code_values == self.max).nonzero()[0, 0])

    @cached_property
    def code_values(self) -> torch.Tensor:
        """float64 tensor of the value of each of the ``2**bits`` codes (NaN codes give NaN).

        This is the decoding table; it is derived from the fields above by formula.
        """
        n = self.code_count
        codes = torch.arange(n, dtype=torch.int64)
        m = self.mantissa_bits
        if self.signed:
            sign = torch.where((codes & self.sign_bit) != 0, -1.0, 1.0).double()
        else:
            sign = torch.ones(n, dtype=torch.float64)
        mag = codes & self.magnitude_mask
        exp_field = mag >> m
        mant = (mag & ((1 << m) - 1)).double()
        if self.exponent_only:
            value = torch.pow(2.0, (exp_field - self.bias).double())
        else:
            normal = torch.pow(2.0, (exp_field - self.bias).double()) * (1.0 + mant / 2**m)
            subnormal = 2.0 ** (self.min_normal_exponent - m) * mant
            value = sign * torch.where(exp_field == 0, subnormal, normal)
        nan = torch.zeros(n, dtype=torch.bool)
        exp_all_ones = exp_field == (1 << self.exponent_bits) - 1
        if self.nan_encoding is NanEncoding.ALL_ONES:
            nan = mag == self.magnitude_mask
        elif self.nan_encoding is NanEncoding.IEEE:
            nan = exp_all_ones & (mant != 0)
            value = torch.where(exp_all_ones & (mant == 0), sign * torch.inf, value)
        elif self.nan_encoding is not NanEncoding.NONE:  # NEGATIVE_ZERO, EXPONENT_ALL_ONES
            nan = codes == self.nan_code
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
    element=False,
)

# OCP Microscaling Formats (MX) Specification v1.0, section 5.3 (element data types): FP4
# E2M1 (bias 1, max 6), FP6 E2M3 (bias 1, max 7.5) and E3M2 (bias 3, max 28); none has inf or
# NaN, all have -0 and subnormals. Codes are held one per uint8 (low bits); pack_fp4 and
# pack_fp6 (numerics.packing) pack them densely. Section 5.4 gives E8M0 (E8M0FNU above).
E2M1FN = Format(
    "e2m1fn",
    2,
    1,
    1,
    6.0,
    NanEncoding.NONE,
    bits=4,
    description="OCP MX FP4 E2M1: no inf, no NaN, max 6",
)
E2M3FN = Format(
    "e2m3fn",
    2,
    3,
    1,
    7.5,
    NanEncoding.NONE,
    bits=6,
    description="OCP MX FP6 E2M3: no inf, no NaN, max 7.5",
)
E3M2FN = Format(
    "e3m2fn",
    3,
    2,
    3,
    28.0,
    NanEncoding.NONE,
    bits=6,
    description="OCP MX FP6 E3M2: no inf, no NaN, max 28",
)

#: The sub-byte element formats by name. Kept out of :data:`FORMATS` (which backends,
#: capabilities, conformance cases and the CLI enumerate) until they work end to end there;
#: :func:`get_format` finds them by name, and the emulator casts (numerics.cast) accept them.
SUBBYTE_FORMATS: dict[str, Format] = {f.name: f for f in (E2M1FN, E2M3FN, E3M2FN)}

#: Every known format by name.
FORMATS: dict[str, Format] = {
    f.name: f for f in (E4M3FN, E5M2, E4M3FNUZ, E5M2FNUZ, E4M3_GAUDI2, E8M0FNU)
}


def element_formats() -> tuple[Format, ...]:
    """Formats that tensor elements may be cast to (``Format.element``)."""
    return tuple(f for f in FORMATS.values() if f.element)


def get_format(spec: str | torch.dtype | Format) -> Format:
    """Return the :class:`Format` named by ``spec`` (a name, a torch dtype or a Format).

    A torch dtype maps to the first format of :data:`FORMATS` stored in it: the dtype's own
    format, registered before any range-limited variant that shares its bits
    (``torch.float8_e4m3fn`` is OCP E4M3FN; ``e4m3_gaudi2`` must be asked for by name).
    """
    if isinstance(spec, Format):
        return spec
    if isinstance(spec, torch.dtype):
        for fmt in FORMATS.values():
            if getattr(torch, fmt.torch_dtype_name, None) == spec:
                return fmt
        raise UnknownFormatError(f"{spec} is not an FP8 dtype; known formats: {', '.join(FORMATS)}")
    if isinstance(spec, str):
        key = spec.lower().removeprefix("torch.").removeprefix("float8_")
        if key in FORMATS:
            return FORMATS[key]
        subbyte = key.removeprefix("float4_").removeprefix("float6_")
        if subbyte in SUBBYTE_FORMATS:
            return SUBBYTE_FORMATS[subbyte]
        raise UnknownFormatError(
            f"unknown FP8 format {spec!r}; known formats: {', '.join(FORMATS)}"
        )
    raise UnknownFormatError(
        f"an FP8 format is named by a string or a torch dtype, not {type(spec).__name__}"
    )
