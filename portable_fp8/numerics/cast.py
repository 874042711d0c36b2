"""Reference casts between high precision and FP8 codes: the numerics contract in code.

The cast of ``x`` with quantisation scale ``s`` into a format ``F`` is defined as:

1. ``y = fp32(x) * fp32(s)``, one IEEE fp32 multiplication (bf16 and fp16 inputs widen to
   fp32 exactly first);
2. one rounding of ``y`` to ``F``: round-to-nearest-even (or stochastic rounding, below)
   with an unbounded exponent range above and ``F``'s subnormals below; no intermediate
   type, so there is no double rounding;
3. overflow and specials:

   ============================  ==================  ==================================
   input / rounded result        ``saturate=True``   ``saturate=False``
   ============================  ==================  ==================================
   NaN                           NaN                 NaN
   +-inf                         +-max (FNUZ: NaN)   +-inf (E5M2), NaN (others)
   rounded magnitude > max       +-max               +-inf (E5M2), NaN (others)
   ============================  ==================  ==================================

   A negative value that rounds to zero keeps its sign where the format has -0 (OCP
   formats) and becomes +0 where it has none (FNUZ). E8M0 (an unsigned scale format with no
   zero) maps zero, negatives and NaN to NaN and rounds magnitudes under its smallest value
   up to it.

NaN results carry the input's sign where the format has one (``Format.nan_code | sign_bit``:
``0x7F | sign`` for the 8-bit OCP formats; ``0x80`` for FNUZ; ``0xFF`` for E8M0). Formats
without NaN and inf (``NanEncoding.NONE``: the OCP MX sub-byte formats E2M1, E2M3, E3M2)
always saturate, whatever ``saturate`` says (there is no inf or NaN code to overflow to):
overflow and +-inf become +-max, and a NaN input raises
:class:`~portable_fp8.errors.Fp8ValueError` (there is no code for it). The contract treats every NaN
code alike: a backend may return any NaN code where the reference returns NaN.

Stochastic rounding with explicit random bits: for each element, let ``lo`` and ``hi`` be the
two neighbours of ``|y|`` in ``F`` (toward and away from zero) and ``f = (|y| - lo) / (hi - lo)``
in ``[0, 1)``. With ``r`` the element's random word read as an unsigned 32-bit integer, the
magnitude rounds to ``hi`` iff ``f * 2**32 > r``. So ``P(hi) = ceil(f * 2**32) / 2**32``: exactly
``f`` whenever ``f`` is a multiple of ``2**-32``, which holds for every ``|y|`` in ``F``'s normal
range (``f`` then has at most 23 fractional bits); deep in the subnormal range the bias is
under ``2**-32`` per element. Overflow then follows the table above.

Everything is vectorised integer arithmetic on the fp32 bit patterns, in cache-sized chunks;
no element is visited in Python.
"""

from __future__ import annotations

import torch

from ..errors import Fp8TypeError, Fp8ValueError
from .formats import Format, NanEncoding

__all__ = [
    "scaled_fp32",
    "round_to_codes",
    "codes_to_float",
    "as_fp8_tensor",
    "codes_of",
    "amax",
]

_CHUNK = 1 << 16


def scaled_fp32(x: torch.Tensor, scale: torch.Tensor | float | None) -> torch.Tensor:
    """``fp32(x) * fp32(scale)``: the single fp32 multiplication of step 1."""
    y = x.to(torch.float32)
    if scale is None:
        return y
    s = torch.as_tensor(scale, dtype=torch.float32, device=x.device)
    return y * s


def round_to_codes(
    y: torch.Tensor,
    fmt: Format,
    *,
    saturate: bool = True,
    rand_bits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Round the fp32 tensor ``y`` to ``fmt`` and return its codes as a uint8 tensor.

    ``rand_bits`` (an integer tensor of ``y``'s shape, read as unsigned 32-bit words)
    selects stochastic rounding; without it the rounding is to nearest, ties to even.
    """
    if y.dtype != torch.float32:
        raise Fp8TypeError(f"round_to_codes: y must be float32, got {y.dtype}")
    if not fmt.has_nan and bool(torch.isnan(y).any()):
        raise Fp8ValueError(f"round_to_codes: NaN has no code in {fmt.name} (no NaN in format)")
    flat = y.reshape(-1)
    out = torch.empty(flat.shape, dtype=torch.uint8, device=y.device)
    bits_flat = None if rand_bits is None else rand_bits.reshape(-1)
    for lo in range(0, flat.numel(), _CHUNK):
        hi = min(lo + _CHUNK, flat.numel())
        r = None if bits_flat is None else bits_flat[lo:hi]
        out[lo:hi] = _round_chunk(flat[lo:hi], fmt, saturate, r)
    return out.reshape(y.shape)


def _round_chunk(
    y: torch.Tensor, fmt: Format, saturate: bool, rand_bits: torch.Tensor | None
) -> torch.Tensor:
    u = y.view(torch.int32)
    negative = u < 0
    a = u & 0x7FFFFFFF  # |y| as bits
    special = a >= 0x7F800000  # inf or NaN
    is_nan = a > 0x7F800000
    exp_field = a >> 23
    if fmt.exponent_only:
        code = _e8m0_magnitude_code(a, exp_field, rand_bits)
    else:
        code = _element_magnitude_code(a, exp_field, fmt, rand_bits)

    max_code = fmt.max_code
    nan_code = fmt.nan_code
    if not fmt.has_nan:  # no inf/NaN codes: always saturating; NaN inputs were refused
        overflow_code = inf_code = nan_code = max_code
    elif saturate:
        overflow_code = max_code
        inf_code = nan_code if fmt.nan_encoding is NanEncoding.NEGATIVE_ZERO else max_code
    else:
        overflow_code = inf_code = fmt.inf_code if fmt.has_inf else nan_code
    code = torch.where(code > max_code, overflow_code, code)
    code = torch.where(special, inf_code, code)
    code = torch.where(is_nan, nan_code, code)

    sign = fmt.sign_bit
    if fmt.exponent_only:  # unsigned, no zero: zero and negatives have no code
        code = torch.where(negative | (a == 0), nan_code, code)
    elif fmt.has_negative_zero:
        code = torch.where(negative, code | sign, code)
    else:  # FNUZ: the sign bit alone is the NaN, so a negative that rounded to zero is +0
        code = torch.where(negative & (code != 0) & (code != nan_code), code | sign, code)
    return code.to(torch.uint8)


def _element_magnitude_code(
    a: torch.Tensor, exp_field: torch.Tensor, fmt: Format, rand_bits: torch.Tensor | None
) -> torch.Tensor:
    """Magnitude code of finite ``|y|`` (bits ``a``), unbounded above (> max_code: overflow).

    With ``M`` the 24-bit significand and ``e`` the exponent of ``|y|``, the target binade is
    ``E = max(e, emin)`` and ``|y| / quantum = M / 2**d`` with ``d = 23 - m + (E - e)``; the
    rounded integer ``k`` lies in ``[0, 2**(m+1)]`` and the code is ``k + (E - emin) * 2**m``
    (a carry out of the mantissa lands in the exponent field by itself).
    """
    m = fmt.mantissa_bits
    emin = fmt.min_normal_exponent
    significand = (a & 0x7FFFFF) | ((exp_field != 0).to(torch.int32) << 23)
    e = exp_field.clamp(min=1) - 127
    binade = e.clamp(min=emin)
    d = 23 - m + (binade - e)
    if rand_bits is None:
        d = d.clamp(max=31)  # significand < 2**24: a shift of 31 already leaves 0
        half_minus_one = (1 << (d - 1)) - 1
        k = (significand + half_minus_one + ((significand >> d) & 1)) >> d
    else:
        k = _stochastic_shift(significand.to(torch.int64), d.to(torch.int64), rand_bits)
    return k.to(torch.int32) + ((binade - emin) << m)


def _stochastic_shift(
    significand: torch.Tensor, d: torch.Tensor, rand_bits: torch.Tensor
) -> torch.Tensor:
    """``floor(M / 2**d)``, plus one iff ``frac * 2**32 > r`` (exact integer comparison)."""
    r = rand_bits.to(torch.int64) & 0xFFFFFFFF
    d = d.clamp(max=56)  # M < 2**24: past 56 the comparison below no longer changes
    low = significand >> d
    dropped = significand & ((1 << d) - 1)
    # frac * 2**32 > r  <=>  dropped * 2**32 > r * 2**d, compared without int64 overflow:
    up_short = (dropped << (32 - d).clamp(min=0)) > r
    up_long = dropped > (r << (d - 32).clamp(min=0))
    return low + torch.where(d <= 32, up_short, up_long).to(torch.int64)


def _e8m0_magnitude_code(
    a: torch.Tensor, exp_field: torch.Tensor, rand_bits: torch.Tensor | None
) -> torch.Tensor:
    """E8M0 code of finite ``|y|``: its fp32 exponent field, rounded on the mantissa.

    E8M0 and fp32 share the bias 127, so for a normal fp32 value the code is the exponent
    field, plus one when the value rounds up to the next power of two (mantissa >= 1/2: with
    a one-bit significand ties go up). fp32 subnormals lie between the two smallest scales,
    2**-127 (code 0, which everything smaller rounds up to) and 2**-126 (code 1).
    """
    mantissa = a & 0x7FFFFF
    if rand_bits is None:
        up = (mantissa >> 22) & 1
    else:
        r = rand_bits.to(torch.int64) & 0xFFFFFFFF
        up = ((mantissa.to(torch.int64) << 9) > r).to(torch.int32)
    normal = exp_field + up
    if rand_bits is None:
        subnormal = (mantissa >= (3 << 21)).to(torch.int32)
    else:  # f = (mantissa - 2**22) / 2**22 between 2**-127 and 2**-126 (none below 2**-127)
        frac32 = (mantissa.to(torch.int64) - (1 << 22)) << 10
        subnormal = (frac32 > r).to(torch.int32)
    return torch.where(exp_field == 0, subnormal, normal)


def codes_to_float(codes: torch.Tensor, fmt: Format) -> torch.Tensor:
    """Decode uint8 codes of ``fmt`` to float32 (exact: every FP8 value is an fp32 value).

    Sub-byte formats read the code from the low ``fmt.bits`` bits; a code with higher bits
    set raises :class:`~portable_fp8.errors.Fp8ValueError`."""
    if fmt.bits < 8 and codes.numel():
        top = int(codes.to(torch.int64).max())
        if top >= fmt.code_count:
            raise Fp8ValueError(
                f"codes_to_float: {fmt.name} codes must be below {fmt.code_count} "
                f"({fmt.bits} bits), got {top}"
            )
    table = fmt.code_values.to(device=codes.device, dtype=torch.float32)
    return table[codes.to(torch.int64)]


def as_fp8_tensor(codes: torch.Tensor, fmt: Format) -> torch.Tensor:
    """Reinterpret uint8 codes as ``fmt``'s torch dtype (uint8 where torch lacks it)."""
    dtype = fmt.torch_dtype
    return codes if dtype == torch.uint8 else codes.view(dtype)


def codes_of(t: torch.Tensor) -> torch.Tensor:
    """The uint8 codes under an FP8 (or uint8) tensor, without copying."""
    return t if t.dtype == torch.uint8 else t.view(torch.uint8)


def amax(x: torch.Tensor) -> torch.Tensor:
    """max |x| as a float32 scalar; NaN if any element is NaN; 0 for an empty tensor."""
    if x.numel() == 0:
        return torch.zeros((), dtype=torch.float32, device=x.device)
    a = x.detach().abs().amax().to(torch.float32)
    return torch.where(torch.isnan(x).any(), torch.nan, a)
