"""Triton kernels for FP8 casts, amax, current-scaling quantisation and dequantisation.

Every kernel implements the numerics contract of :mod:`portable_fp8.numerics.cast` with
explicit integer arithmetic on the fp32 bit pattern (:func:`_encode`): the FP8 code is computed
from the significand and exponent fields with a round-to-nearest-even (or stochastic) shift,
and overflow, infinities, NaN and signed zero are handled by the contract's table. No kernel
relies on the hardware's or the interpreter's own FP8 conversion, so the same code gives the
same bits on an H100 and in Triton's CPU interpreter (``TRITON_INTERPRET=1``).

Decoding (FP8 -> fp32) reads a 256-entry table built from :attr:`Format.code_values`, exact for
every format, Gaudi2's range-limited E4M3 and the FNUZ formats included.

Scales follow the project convention (a scale is the quantisation multiplier). Scales computed
in a kernel from amax reproduce :func:`portable_fp8.numerics.scaling.scale_from_amax` bit for bit,
``fp32(max / amax)`` (one correctly rounded division, ``tl.math.div_rn``), then
``* 2**-margin`` (exact), ``1`` for a zero or non-finite amax, clamped to ``2**127``, and
rounded down to a power of two when asked.

Results are rounded to bf16 explicitly too (:func:`to_out_dtype`): Triton's interpreter
converts fp32 to bf16 by truncation, the GPU to nearest even; the contract wants the latter.

amax is reduced on the integer bit pattern of ``|x|``: for non-negative floats the order of
the bit patterns is the order of the values, and every NaN pattern is above +inf, so the
maximum propagates NaN without a separate test, and the partial maxima of many programs
combine with one integer ``atomic_max``.
"""

from __future__ import annotations

import os

if os.environ.get("PORTABLE_FP8_TRITON_INTERPRET") == "1":  # must precede triton's jit
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton
import triton.language as tl

__all__ = ["INTERPRET", "interpreter_problem", "triton", "tl"]

#: True when the kernels run in Triton's CPU interpreter (on CPU tensors).
INTERPRET: bool = os.environ.get("TRITON_INTERPRET") == "1"


def interpreter_problem() -> str | None:
    """Why the interpreter cannot run our kernels in this process (None if it can).

    Triton decorates its own library functions when it is first imported; if that happened
    before ``TRITON_INTERPRET=1`` was set (``import portable_fp8`` imports triton through
    torch.library), reductions such as ``tl.max`` fail in the interpreter.
    """
    from triton.language import standard

    if type(standard.cdiv).__name__ != "InterpretedFunction":
        return (
            "Triton was imported before TRITON_INTERPRET=1 was set; set TRITON_INTERPRET=1 "
            "in the environment of the process"
        )
    return None


# --- element encoding ------------------------------------------------------------------------


@triton.jit
def _encode(
    y,
    r,
    M: tl.constexpr,
    EMIN: tl.constexpr,
    MAX_CODE: tl.constexpr,
    NAN_CODE: tl.constexpr,
    OVF_CODE: tl.constexpr,
    INF_CODE: tl.constexpr,
    NEG_ZERO: tl.constexpr,
    SIGN_BIT: tl.constexpr,
    STOCHASTIC: tl.constexpr,
):
    """FP8 code (int32 in [0, 255]) of the fp32 tensor ``y``; ``r``: 32-bit random words.

    Same derivation as the emulator: with ``S`` the 24-bit significand and ``e`` the exponent
    of ``|y|``, the target binade is ``E = max(e, emin)``, ``|y| / quantum = S / 2**d`` with
    ``d = 23 - M + (E - e)``; the rounded integer ``k`` plus ``(E - emin) << M`` is the code
    (a carry out of the mantissa lands in the exponent field).
    """
    u = y.to(tl.int32, bitcast=True)
    a = u & 0x7FFFFFFF
    exp_field = a >> 23
    sig = (a & 0x7FFFFF) | tl.where(exp_field != 0, 0x800000, 0)
    e = tl.maximum(exp_field, 1) - 127
    binade = tl.maximum(e, EMIN)
    d = 23 - M + (binade - e)
    if STOCHASTIC:
        # floor(S / 2**d) + (frac * 2**32 > r), compared exactly in int64 (d >= 20 here)
        d64 = tl.minimum(d, 56).to(tl.int64)
        s64 = sig.to(tl.int64)
        r64 = r.to(tl.int64) & 0xFFFFFFFF
        low = s64 >> d64
        dropped = s64 - (low << d64)
        up_short = (dropped << tl.maximum(32 - d64, 0)) > r64
        up_long = dropped > (r64 << tl.maximum(d64 - 32, 0))
        k = (low + tl.where(d64 <= 32, up_short, up_long).to(tl.int64)).to(tl.int32)
    else:
        d = tl.minimum(d, 31)  # S < 2**24: a shift of 31 already gives 0
        half_minus_one = (1 << (d - 1)) - 1
        k = (sig + half_minus_one + ((sig >> d) & 1)) >> d
    code = k + ((binade - EMIN) << M)
    code = tl.where(code > MAX_CODE, OVF_CODE, code)
    code = tl.where(a >= 0x7F800000, INF_CODE, code)
    code = tl.where(a > 0x7F800000, NAN_CODE, code)
    negative = u < 0
    if NEG_ZERO:
        code = tl.where(negative, code | SIGN_BIT, code)
    else:  # FNUZ: no -0, and the sign bit alone is the NaN
        code = tl.where(negative & (code != 0) & (code != NAN_CODE), code | SIGN_BIT, code)
    return code


@triton.jit
def _encode_any(
    y,
    r,
    M: tl.constexpr,
    EMIN: tl.constexpr,
    MAX_CODE: tl.constexpr,
    NAN_CODE: tl.constexpr,
    OVF_CODE: tl.constexpr,
    INF_CODE: tl.constexpr,
    NEG_ZERO: tl.constexpr,
    SIGN_BIT: tl.constexpr,
    STOCHASTIC: tl.constexpr,
    HW: tl.constexpr,
    OVF_BITS: tl.constexpr,
    OVF_AT_TIE: tl.constexpr,
):
    """The code of ``y``: the hardware conversion where it meets the contract, else
    :func:`_encode`.

    ``HW`` (1: E4M3FN, 2: E5M2, 0: none) selects ``cvt.rn.satfinite`` (round to nearest
    even, subnormals kept, overflow and inf to +-max, NaN to NaN: the contract's saturating
    cast of the OCP formats). For the non-saturating table, magnitudes that round above max
    (``|y| > OVF_BITS``, or ``>=`` when the tie at that boundary rounds up, ``OVF_AT_TIE``)
    and infinities then get ``OVF_CODE`` with the sign. GPU tests check this path bit for bit
    against the emulator on every bf16 and fp16 pattern and random fp32 patterns.
    """
    if HW != 0 and not STOCHASTIC:
        if HW == 1:
            code = y.to(tl.float8e4nv).to(tl.uint8, bitcast=True).to(tl.int32)
        else:
            code = y.to(tl.float8e5).to(tl.uint8, bitcast=True).to(tl.int32)
        if OVF_CODE != MAX_CODE:
            u = y.to(tl.int32, bitcast=True)
            a = u & 0x7FFFFFFF
            if OVF_AT_TIE:
                over = (a >= OVF_BITS) & (a <= 0x7F800000)
            else:
                over = (a > OVF_BITS) & (a <= 0x7F800000)
            code = tl.where(over, OVF_CODE | (code & SIGN_BIT), code)
        return code
    else:
        return _encode(
            y, r, M, EMIN, MAX_CODE, NAN_CODE, OVF_CODE, INF_CODE, NEG_ZERO, SIGN_BIT, STOCHASTIC
        )


#: In the interpreter, widen bf16 by shifting its bits (see :func:`_to_f32`).
_BF16_BY_BITS = tl.constexpr(INTERPRET)


@triton.jit
def _to_f32(x):
    """``fp32(x)``, exact. Triton's interpreter decodes bf16 subnormals wrongly (seen with
    triton 3.9: 2**-133 read as a much larger value), so there bf16 is widened by shifting its
    bits; the GPU's own conversion is exact (checked on every bf16 pattern)."""
    if _BF16_BY_BITS:
        if x.dtype == tl.bfloat16:
            bits = x.to(tl.int16, bitcast=True).to(tl.int32) << 16
            return bits.to(tl.float32, bitcast=True)
        else:
            return x.to(tl.float32)
    else:
        return x.to(tl.float32)


@triton.jit
def _abs_bits(x):
    """Integer bit pattern of ``|fp32(x)|``: ordered like the values, NaN above inf."""
    return _to_f32(x).to(tl.int32, bitcast=True) & 0x7FFFFFFF


@triton.jit
def _scale_from_amax_bits(
    amax_bits, FMT_MAX: tl.constexpr, MARGIN_MUL: tl.constexpr, POW2: tl.constexpr
):
    """``portable_fp8.numerics.scaling.scale_from_amax`` of the amax given by its bit pattern."""
    amax = amax_bits.to(tl.float32, bitcast=True)
    degenerate = (amax_bits == 0) | (amax_bits >= 0x7F800000)
    safe = tl.where(degenerate, 1.0, amax)
    scale = tl.math.div_rn(tl.full(safe.shape, FMT_MAX, tl.float32), safe) * MARGIN_MUL
    scale = tl.where(degenerate, 1.0, scale)
    scale = tl.minimum(scale, 1.7014118346046923e38)  # 2**127
    if POW2:  # largest power of two <= scale (scales are normal: checked by the caller)
        scale = (scale.to(tl.int32, bitcast=True) & 0x7F800000).to(tl.float32, bitcast=True)
    return scale


@triton.jit
def to_out_dtype(v, OUT_DTYPE: tl.constexpr):
    """``v`` (fp32) rounded to nearest even in ``OUT_DTYPE`` (bf16 by integer arithmetic)."""
    if tl.bfloat16 == OUT_DTYPE:
        u = v.to(tl.int32, bitcast=True)
        rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
        is_nan = (u & 0x7FFFFFFF) > 0x7F800000
        rounded = tl.where(is_nan, (u >> 16) | 0x40, rounded)  # keep NaN a (quiet) NaN
        return rounded.to(tl.int16).to(tl.bfloat16, bitcast=True)
    else:
        return v.to(OUT_DTYPE)


@triton.jit
def _reciprocal(s):
    """``fp32(1 / s)``, correctly rounded (what ``torch.reciprocal`` gives)."""
    return tl.math.div_rn(tl.full(s.shape, 1.0, tl.float32), s)


# --- kernels -----------------------------------------------------------------------------------


@triton.jit
def amax_flat_kernel(x_ptr, amax_bits_ptr, n, BLOCK: tl.constexpr):
    """``amax_bits = max(amax_bits, bits |x|)`` over a contiguous tensor (atomic per program)."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n, other=0.0)
    tl.atomic_max(amax_bits_ptr, tl.max(_abs_bits(x), axis=0))


@triton.jit
def cast_flat_kernel(
    x_ptr,
    scale_ptr,
    out_ptr,
    rand_ptr,
    amax_in_ptr,
    amax_out_ptr,
    scale_out_ptr,
    scale_inv_out_ptr,
    n,
    seed,
    M: tl.constexpr,
    EMIN: tl.constexpr,
    MAX_CODE: tl.constexpr,
    NAN_CODE: tl.constexpr,
    OVF_CODE: tl.constexpr,
    INF_CODE: tl.constexpr,
    NEG_ZERO: tl.constexpr,
    SIGN_BIT: tl.constexpr,
    HW: tl.constexpr,
    OVF_BITS: tl.constexpr,
    OVF_AT_TIE: tl.constexpr,
    RAND: tl.constexpr,
    SCALE_FROM_AMAX: tl.constexpr,
    FMT_MAX: tl.constexpr,
    MARGIN_MUL: tl.constexpr,
    POW2: tl.constexpr,
    FUSED_AMAX: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Tensorwise cast of a contiguous tensor: ``out = code(x * scale)``.

    ``RAND``: 0 nearest-even, 1 stochastic with the words at ``rand_ptr``, 2 stochastic with
    Philox words ``tl.randint(seed, flat index)``. ``SCALE_FROM_AMAX``: the scale is computed
    from the amax bits at ``amax_in_ptr`` (current scaling, second pass); program 0 then
    stores it at ``scale_out_ptr`` and its reciprocal at ``scale_inv_out_ptr``.
    ``FUSED_AMAX``: also reduce ``|x|`` into the amax bits at ``amax_out_ptr`` (delayed
    scaling: one pass).
    """
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    if SCALE_FROM_AMAX:
        s = _scale_from_amax_bits(tl.load(amax_in_ptr), FMT_MAX, MARGIN_MUL, POW2)
        if pid == 0:
            tl.store(scale_out_ptr, s)
            tl.store(scale_inv_out_ptr, _reciprocal(s))
    else:
        s = tl.load(scale_ptr)
    y = _to_f32(x) * s
    if RAND == 1:
        r = tl.load(rand_ptr + offs, mask=mask, other=0)
    elif RAND == 2:
        r = tl.randint(seed, offs.to(tl.uint32))
    else:
        r = 0
    code = _encode_any(
        y,
        r,
        M,
        EMIN,
        MAX_CODE,
        NAN_CODE,
        OVF_CODE,
        INF_CODE,
        NEG_ZERO,
        SIGN_BIT,
        RAND != 0,
        HW,
        OVF_BITS,
        OVF_AT_TIE,
    )
    tl.store(out_ptr + offs, code.to(tl.uint8), mask=mask)
    if FUSED_AMAX:
        tl.atomic_max(amax_out_ptr, tl.max(tl.where(mask, _abs_bits(x), 0), axis=0))


@triton.jit
def cast_2d_kernel(
    x_ptr,
    scale_ptr,
    out_ptr,
    rand_ptr,
    R,
    C,
    sxr,
    sxc,
    ssr,
    ssc,
    seed,
    M: tl.constexpr,
    EMIN: tl.constexpr,
    MAX_CODE: tl.constexpr,
    NAN_CODE: tl.constexpr,
    OVF_CODE: tl.constexpr,
    INF_CODE: tl.constexpr,
    NEG_ZERO: tl.constexpr,
    SIGN_BIT: tl.constexpr,
    HW: tl.constexpr,
    OVF_BITS: tl.constexpr,
    OVF_AT_TIE: tl.constexpr,
    RAND: tl.constexpr,
    GR: tl.constexpr,
    GC: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Cast of a strided 2-D view with one scale per ``GR x GC`` block (0 or less: whole dim).

    ``out`` is row-major (R, C). Random
    words (``RAND`` == 1) are row-major (R, C); Philox words (``RAND`` == 2) are indexed by
    ``row * C + col``.
    """
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    rows = (pid_r * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    cols = (pid_c * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    mask = (rows[:, None] < R) & (cols[None, :] < C)
    x = tl.load(x_ptr + rows[:, None] * sxr + cols[None, :] * sxc, mask=mask, other=0.0)
    srow = rows // GR if GR > 0 else rows * 0
    scol = cols // GC if GC > 0 else cols * 0
    s = tl.load(scale_ptr + srow[:, None] * ssr + scol[None, :] * ssc, mask=mask, other=1.0)
    y = _to_f32(x) * s
    flat = rows[:, None] * C + cols[None, :]
    if RAND == 1:
        r = tl.load(rand_ptr + flat, mask=mask, other=0)
    elif RAND == 2:
        r = tl.randint(seed, flat.to(tl.uint32))
    else:
        r = 0
    code = _encode_any(
        y,
        r,
        M,
        EMIN,
        MAX_CODE,
        NAN_CODE,
        OVF_CODE,
        INF_CODE,
        NEG_ZERO,
        SIGN_BIT,
        RAND != 0,
        HW,
        OVF_BITS,
        OVF_AT_TIE,
    )
    code = code.to(tl.uint8)
    tl.store(out_ptr + flat, code, mask=mask)


@triton.jit
def cast_transpose_kernel(
    x_ptr,
    scale_ptr,
    out_ptr,
    out_t_ptr,
    amax_in_ptr,
    amax_out_ptr,
    scale_out_ptr,
    scale_inv_out_ptr,
    R,
    C,
    sxr,
    sxc,
    M: tl.constexpr,
    EMIN: tl.constexpr,
    MAX_CODE: tl.constexpr,
    NAN_CODE: tl.constexpr,
    OVF_CODE: tl.constexpr,
    INF_CODE: tl.constexpr,
    NEG_ZERO: tl.constexpr,
    SIGN_BIT: tl.constexpr,
    HW: tl.constexpr,
    OVF_BITS: tl.constexpr,
    OVF_AT_TIE: tl.constexpr,
    SCALE_FROM_AMAX: tl.constexpr,
    FMT_MAX: tl.constexpr,
    MARGIN_MUL: tl.constexpr,
    POW2: tl.constexpr,
    FUSED_AMAX: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Tensorwise cast of a strided (R, C) view into row-major ``out`` (R, C) and ``out_t``
    (C, R), from one read: the operands an FP8 GEMM's backward pass needs.

    The scale is read from ``scale_ptr`` or, with ``SCALE_FROM_AMAX``, computed from the amax
    bits at ``amax_in_ptr`` (current scaling: the amax pass's result or a given amax), then
    stored by program (0, 0) at ``scale_out_ptr``; that program always stores its reciprocal
    at ``scale_inv_out_ptr``.
    ``FUSED_AMAX``: also reduce ``|x|`` into the amax bits at ``amax_out_ptr`` (delayed scaling).
    """
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    rows = (pid_r * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    cols = (pid_c * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    mask = (rows[:, None] < R) & (cols[None, :] < C)
    x = tl.load(x_ptr + rows[:, None] * sxr + cols[None, :] * sxc, mask=mask, other=0.0)
    if SCALE_FROM_AMAX:
        amax_bits = tl.load(amax_in_ptr) & 0x7FFFFFFF  # a given amax may carry a sign
        s = _scale_from_amax_bits(amax_bits, FMT_MAX, MARGIN_MUL, POW2)
    else:
        s = tl.load(scale_ptr)
    if (pid_r == 0) & (pid_c == 0):
        if SCALE_FROM_AMAX:
            tl.store(scale_out_ptr, s)
        tl.store(scale_inv_out_ptr, _reciprocal(s))
    code = _encode_any(
        _to_f32(x) * s,
        0,
        M,
        EMIN,
        MAX_CODE,
        NAN_CODE,
        OVF_CODE,
        INF_CODE,
        NEG_ZERO,
        SIGN_BIT,
        False,
        HW,
        OVF_BITS,
        OVF_AT_TIE,
    )
    tl.store(out_ptr + rows[:, None] * C + cols[None, :], code.to(tl.uint8), mask=mask)
    # The transposed tile is read again in transposed order (from L1/L2: this program just
    # loaded it) and encoded again, instead of transposing the codes with tl.trans, which
    # wrote wrong codes for fp32 inputs with triton 3.6 on the H100.
    mask_t = (cols[:, None] < C) & (rows[None, :] < R)
    xt = tl.load(x_ptr + rows[None, :] * sxr + cols[:, None] * sxc, mask=mask_t, other=0.0)
    code_t = _encode_any(
        _to_f32(xt) * s,
        0,
        M,
        EMIN,
        MAX_CODE,
        NAN_CODE,
        OVF_CODE,
        INF_CODE,
        NEG_ZERO,
        SIGN_BIT,
        False,
        HW,
        OVF_BITS,
        OVF_AT_TIE,
    )
    tl.store(out_t_ptr + cols[:, None] * R + rows[None, :], code_t.to(tl.uint8), mask=mask_t)
    if FUSED_AMAX:
        tl.atomic_max(amax_out_ptr, tl.max(tl.max(tl.where(mask, _abs_bits(x), 0), axis=1), axis=0))


@triton.jit
def quantize_blocks_kernel(
    x_ptr,
    out_ptr,
    scale_ptr,
    scale_inv_ptr,
    R,
    C,
    sxr,
    sxc,
    sor,
    soc,
    ssr,
    ssc,
    M: tl.constexpr,
    EMIN: tl.constexpr,
    MAX_CODE: tl.constexpr,
    NAN_CODE: tl.constexpr,
    OVF_CODE: tl.constexpr,
    INF_CODE: tl.constexpr,
    NEG_ZERO: tl.constexpr,
    SIGN_BIT: tl.constexpr,
    HW: tl.constexpr,
    OVF_BITS: tl.constexpr,
    OVF_AT_TIE: tl.constexpr,
    FMT_MAX: tl.constexpr,
    MARGIN_MUL: tl.constexpr,
    POW2: tl.constexpr,
    ROW_BLOCKS: tl.constexpr,
    COLS_PER_PROGRAM: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Current scaling per block, fused: amax, scale, cast, in one launch.

    A program owns ``BLOCK_R`` rows and ``COLS_PER_PROGRAM`` columns (0: all ``C``), which
    it reads twice in ``BLOCK_C`` steps (amax, then cast; the second read mostly hits L2).
    Blocks are one row each (``ROW_BLOCKS``: rowwise, 1x128) or the program's whole
    ``BLOCK_R x COLS_PER_PROGRAM`` tile (128x128). Scales and their reciprocals are stored at
    ``(row block, program column)`` with strides ``ssr, ssc``.
    """
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    rows = (pid_r * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    if COLS_PER_PROGRAM > 0:  # BLOCK_C divides it; columns >= C are masked
        c_lo = pid_c * COLS_PER_PROGRAM
        steps = COLS_PER_PROGRAM // BLOCK_C
    else:
        c_lo = 0
        steps = tl.cdiv(C, BLOCK_C)
    amax = tl.zeros((BLOCK_R,), dtype=tl.int32)
    for i in range(0, steps):
        cols = (c_lo + i * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
        mask = (rows[:, None] < R) & (cols[None, :] < C)
        x = tl.load(x_ptr + rows[:, None] * sxr + cols[None, :] * sxc, mask=mask, other=0.0)
        amax = tl.maximum(amax, tl.max(tl.where(mask, _abs_bits(x), 0), axis=1))
    if not ROW_BLOCKS:
        amax = tl.zeros((BLOCK_R,), dtype=tl.int32) + tl.max(amax, axis=0)
    s = _scale_from_amax_bits(amax, FMT_MAX, MARGIN_MUL, POW2)
    if ROW_BLOCKS:
        s_offs = rows * ssr + pid_c * ssc
        s_mask = rows < R
    else:
        s_offs = pid_r * ssr + pid_c * ssc + rows * 0
        s_mask = rows == pid_r * BLOCK_R
    tl.store(scale_ptr + s_offs, s, mask=s_mask)
    tl.store(scale_inv_ptr + s_offs, _reciprocal(s), mask=s_mask)
    for i in range(0, steps):
        cols = (c_lo + i * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
        mask = (rows[:, None] < R) & (cols[None, :] < C)
        x = tl.load(x_ptr + rows[:, None] * sxr + cols[None, :] * sxc, mask=mask, other=0.0)
        y = _to_f32(x) * s[:, None]
        code = _encode_any(
            y,
            0,
            M,
            EMIN,
            MAX_CODE,
            NAN_CODE,
            OVF_CODE,
            INF_CODE,
            NEG_ZERO,
            SIGN_BIT,
            False,
            HW,
            OVF_BITS,
            OVF_AT_TIE,
        )
        tl.store(out_ptr + rows[:, None] * sor + cols[None, :] * soc, code.to(tl.uint8), mask=mask)


@triton.jit
def dequant_2d_kernel(
    q_ptr,
    table_ptr,
    scale_inv_ptr,
    out_ptr,
    R,
    C,
    sqr,
    sqc,
    ssr,
    ssc,
    GR: tl.constexpr,
    GC: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """``out = out_dtype(table[q] * scale_inv)`` (one fp32 product, one final rounding)."""
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    rows = (pid_r * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    cols = (pid_c * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    mask = (rows[:, None] < R) & (cols[None, :] < C)
    q = tl.load(q_ptr + rows[:, None] * sqr + cols[None, :] * sqc, mask=mask, other=0)
    v = tl.load(table_ptr + q.to(tl.int32), mask=mask, other=0.0)
    srow = rows // GR if GR > 0 else rows * 0
    scol = cols // GC if GC > 0 else cols * 0
    s = tl.load(scale_inv_ptr + srow[:, None] * ssr + scol[None, :] * ssc, mask=mask, other=1.0)
    out = v * s
    tl.store(
        out_ptr + rows[:, None] * C + cols[None, :],
        to_out_dtype(out, out_ptr.dtype.element_ty),
        mask=mask,
    )


@triton.jit
def philox_words_kernel(out_ptr, n, seed, BLOCK: tl.constexpr):
    """The 32-bit words ``tl.randint(seed, i)`` that seeded stochastic rounding uses."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    r = tl.randint(seed, offs.to(tl.uint32))
    tl.store(out_ptr + offs, r.to(tl.int32, bitcast=True), mask=offs < n)
