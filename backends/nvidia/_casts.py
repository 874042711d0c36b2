"""Cast, amax and quantisation primitives shared by the ``cuda`` and ``triton`` backends.

:class:`TritonCastsMixin` implements :class:`portable_fp8.dispatch.backend.Backend`'s cast
primitives
with the kernels of :mod:`._triton_kernels` (contract-exact integer rounding), including
:meth:`~TritonCastsMixin.quantize_transpose` (codes and their transpose from one read, with the
amax fused in when the scale is given), plus two extras the op layer does not expose:
:meth:`~TritonCastsMixin.cast_with_amax` (delayed scaling of a flat tensor: cast and amax in one
pass) and seeded stochastic rounding (:meth:`~TritonCastsMixin.philox_words` gives the words it
uses, so the result can be checked bit for bit).

Kernels that compute a scale also write its reciprocal ``fp32(1 / scale)`` (the contract's
rule, :func:`portable_fp8.numerics.scaling.reciprocal`, correctly rounded in the kernel) into
a tensor of its own, which the returned :class:`Fp8Tensor` carries as ``scale_inv``: the
GEMM then launches no ``torch.reciprocal``, and cuBLASLt gets an aligned scale pointer (it
rejects views into a shared buffer).
"""

from __future__ import annotations

import os
import struct
from functools import lru_cache

import torch

from portable_fp8.dispatch.backend import CastTranspose
from portable_fp8.numerics.formats import Format, NanEncoding
from portable_fp8.numerics.granularity import TENSORWISE, Granularity, as_2d_shape
from portable_fp8.numerics.tensor import Fp8Tensor

__all__ = [
    "TritonCastsMixin",
    "fmt_constants",
    "decode_table",
]

#: Formats whose saturating cast the GPU's ``cvt.rn.satfinite`` performs exactly (1: E4M3FN,
#: 2: E5M2); the others (FNUZ, Gaudi2's 240 range) and stochastic rounding use integer code.
_HW_CVT = {"e4m3fn": 1, "e5m2": 2}
_FLAT_BLOCK = 4096
_FLAT_WARPS = 8
#: Margins up to this keep every scale_from_amax result a normal fp32 number (max >= 240 and
#: amax <= 2**128 give scales >= 2**-120), which the in-kernel power-of-two rounding needs.
_MAX_FUSED_MARGIN = 6
#: (BLOCK_R, BLOCK_C, num_warps) of the cast + transpose kernel.
_TRANSPOSE_TILE = (64, 64, 4)

# -- format constants ---------------------------------------------------------------------------


@lru_cache(maxsize=64)
def fmt_constants(fmt: Format, saturate: bool) -> dict:
    """The constexpr arguments of :func:`_triton_kernels._encode` for one format and mode."""
    nan = fmt.nan_code
    if saturate:
        overflow = fmt.max_code
        inf = nan if fmt.nan_encoding is NanEncoding.NEGATIVE_ZERO else fmt.max_code
    else:
        overflow = inf = fmt.inf_code if fmt.has_inf else nan
    hw = _HW_CVT.get(fmt.name, 0)
    if K.INTERPRET or os.environ.get("PORTABLE_FP8_NVIDIA_INTEGER_CAST") == "1":
        hw = 0
    boundary = struct.unpack("<i", struct.pack("<f", fmt.overflow_boundary))[0]
    return {
        "M": fmt.mantissa_bits,
        "EMIN": fmt.min_normal_exponent,
        "MAX_CODE": fmt.max_code,
        "NAN_CODE": nan,
        "OVF_CODE": overflow,
        "INF_CODE": inf,
        "NEG_ZERO": fmt.has_negative_zero,
        "SIGN_BIT": fmt.sign_bit,
        "HW": hw,
        "OVF_BITS": boundary,
        "OVF_AT_TIE": fmt.overflows_at_boundary,
    }


@lru_cache(maxsize=64)
def decode_table(fmt: Format, device: torch.device) -> torch.Tensor:
    return fmt.code_values.to(dtype=torch.float32, device=device)


@lru_cache(maxsize=256)
def _transpose_constants(
    fmt: Format, saturate: bool, margin: int, power_of_two: bool, from_amax: bool
) -> dict:
    """Every constexpr argument of the cast + transpose kernel, built once per variant."""
    br, bc, warps = _TRANSPOSE_TILE
    return {
        "SCALE_FROM_AMAX": from_amax,
        "FUSED_AMAX": not from_amax,
        "BLOCK_R": br,
        "BLOCK_C": bc,
        "num_warps": warps,
        **fmt_constants(fmt, saturate),
        **_scale_constants(fmt, margin, power_of_two),
    }


def _scale_constants(fmt: Format, margin: int, power_of_two: bool) -> dict:
    return {"FMT_MAX": float(fmt.max), "MARGIN_MUL": 2.0**-margin, "POW2": bool(power_of_two)}


def _as_codes(x: torch.Tensor, fmt: Format) -> torch.Tensor:
    """An uninitialised uint8 tensor shaped like ``x`` (codes are written as bytes)."""
    return torch.empty(x.shape, dtype=torch.uint8, device=x.device)


def _view_fmt(codes: torch.Tensor, fmt: Format) -> torch.Tensor:
    dtype = fmt.torch_dtype
    return codes if dtype == torch.uint8 else codes.view(dtype)


def _rand_mode(rand_bits: torch.Tensor | None, seed: int | None) -> int:
    if rand_bits is not None:
        return 1
    return 2 if seed is not None else 0


def _rand_words(rand_bits: torch.Tensor | None) -> torch.Tensor | None:
    """The random words as a contiguous int32/int64 tensor the kernels read."""
    if rand_bits is None:
        return None
    if rand_bits.dtype == torch.uint32:
        rand_bits = rand_bits.view(torch.int32)
    return rand_bits.contiguous()


class TritonCastsMixin:
    """Backend cast primitives on Triton kernels (mixed into a :class:`Backend`)."""

    # -- casts ---------------------------------------------------------------------------------

    def cast_to_fp8(
        self,
        x: torch.Tensor,
        fmt: Format,
        scale: torch.Tensor,
        granularity: Granularity,
        *,
        saturate: bool,
        rand_bits: torch.Tensor | None,
        seed: int | None = None,
    ) -> torch.Tensor:
        """Codes of ``x * scale`` (contract-exact). ``seed``: Philox stochastic rounding."""
        if x.numel() == 0:
            return _view_fmt(_as_codes(x, fmt), fmt)
        if granularity.is_tensorwise and x.is_contiguous():
            codes, _ = self._cast_flat(x, fmt, scale, saturate, rand_bits, seed, fused_amax=False)
            return _view_fmt(codes, fmt)
        codes = self._cast_2d(x, fmt, scale, granularity, saturate, rand_bits, seed)
        return _view_fmt(codes, fmt)

    def cast_with_amax(
        self, x: torch.Tensor, fmt: Format, scale: torch.Tensor, *, saturate: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Delayed scaling in one pass: (codes of ``x * scale``, amax of ``x``) (tensorwise)."""
        x = x.contiguous()
        codes, amax = self._cast_flat(x, fmt, scale, saturate, None, None, fused_amax=True)
        return _view_fmt(codes, fmt), amax

    def quantize_transpose(
        self,
        x: torch.Tensor,
        fmt: Format,
        scale: torch.Tensor | None,
        amax: torch.Tensor | None,
        *,
        margin: int,
        power_of_two: bool,
        saturate: bool,
    ) -> CastTranspose:
        """Current scaling in two passes (amax; cast + transposed store), in one with a given
        amax, or, with a given scale, one pass that also measures the amax (delayed scaling)."""
        if x.numel() == 0 or not 0 <= margin <= _MAX_FUSED_MARGIN:
            return super().quantize_transpose(
                x, fmt, scale, amax, margin=margin, power_of_two=power_of_two, saturate=saturate
            )
        r, c = x.shape
        dev = x.device
        out = torch.empty((r, c), dtype=torch.uint8, device=dev)
        out_t = torch.empty((c, r), dtype=torch.uint8, device=dev)
        from_amax = scale is None
        if from_amax:
            if amax is None:
                amax_bits = self._amax_bits(x.contiguous())
            else:  # |amax| in a buffer of its own: returned as the amax, never the caller's
                amax_bits = amax.to(torch.float32).abs().reshape(1).view(torch.int32)
            scale = torch.empty((), dtype=torch.float32, device=dev)
        else:
            amax_bits = torch.zeros(1, dtype=torch.int32, device=dev)
            scale = scale.to(torch.float32).reshape(())
        # A tensor of its own (not a view into a shared one): cuBLASLt rejects scale pointers
        # that are not aligned (CUBLAS_STATUS_NOT_SUPPORTED, seen on the H100).
        scale_inv = torch.empty((), dtype=torch.float32, device=dev)
        consts = _transpose_constants(fmt, saturate, margin, power_of_two, from_amax)
        grid = (triton_cdiv(r, consts["BLOCK_R"]), triton_cdiv(c, consts["BLOCK_C"]))
        _kernels().cast_transpose_kernel[grid](
            x,
            scale,
            out,
            out_t,
            amax_bits,
            amax_bits,
            scale,
            scale_inv,
            r,
            c,
            x.stride(0),
            x.stride(1),
            **consts,
        )
        amax = amax_bits.view(torch.float32).reshape(())
        q = Fp8Tensor(_view_fmt(out, fmt), scale, fmt, TENSORWISE, scale_inv)
        qt = Fp8Tensor(_view_fmt(out_t, fmt), scale, fmt, TENSORWISE, scale_inv)
        return CastTranspose(q, qt, amax)

    def philox_words(self, shape: tuple[int, ...], seed: int, device) -> torch.Tensor:
        """The int32 words seeded stochastic rounding draws for a tensor of ``shape``."""
        n = 1
        for s in shape:
            n *= s
        out = torch.empty(n, dtype=torch.int32, device=device)
        if n:
            K.philox_words_kernel[(triton_cdiv(n, 1024),)](out, n, seed, BLOCK=1024)
        return out.reshape(shape)

    def cast_from_fp8(
        self,
        q: torch.Tensor,
        fmt: Format,
        scale_inv: torch.Tensor,
        granularity: Granularity,
        out_dtype: torch.dtype,
    ) -> torch.Tensor:
        out = torch.empty(q.shape, dtype=out_dtype, device=q.device)
        if q.numel() == 0:
            return out
        r, c = as_2d_shape(q.shape)
        q2 = q.reshape(r, c).view(torch.uint8) if q.dtype != torch.uint8 else q.reshape(r, c)
        s2, gr, gc = _scale_2d(scale_inv.to(torch.float32), granularity, (r, c))
        br, bc = 16, 256
        K.dequant_2d_kernel[(triton_cdiv(r, br), triton_cdiv(c, bc))](
            q2,
            decode_table(fmt, q.device),
            s2,
            out,
            r,
            c,
            q2.stride(0),
            q2.stride(1),
            s2.stride(0),
            s2.stride(1),
            GR=gr,
            GC=gc,
            BLOCK_R=br,
            BLOCK_C=bc,
        )
        return out

    # -- amax and current scaling --------------------------------------------------------------

    def amax(self, x: torch.Tensor, granularity: Granularity) -> torch.Tensor:
        if not granularity.is_tensorwise or x.numel() == 0:
            return super().amax(x, granularity)
        bits = self._amax_bits(x.contiguous())
        return bits.view(torch.float32).reshape(())

    def quantize_dynamic(
        self,
        x: torch.Tensor,
        fmt: Format,
        granularity: Granularity,
        *,
        margin: int,
        power_of_two: bool,
        saturate: bool,
        rand_bits: torch.Tensor | None,
    ) -> Fp8Tensor:
        fusable = (
            rand_bits is None
            and x.numel() > 0
            and 0 <= margin <= _MAX_FUSED_MARGIN
            and not granularity.power_of_two
        )
        if fusable and granularity.is_tensorwise:
            return self._quantize_tensorwise(x.contiguous(), fmt, margin, power_of_two, saturate)
        block = _fused_block_layout(granularity, x) if fusable else None
        if block is not None:
            return self._quantize_blocks(x, fmt, granularity, block, margin, power_of_two, saturate)
        return super().quantize_dynamic(
            x,
            fmt,
            granularity,
            margin=margin,
            power_of_two=power_of_two,
            saturate=saturate,
            rand_bits=rand_bits,
        )

    # -- launchers -----------------------------------------------------------------------------

    def _amax_bits(self, x: torch.Tensor) -> torch.Tensor:
        bits = torch.zeros(1, dtype=torch.int32, device=x.device)
        n = x.numel()
        K.amax_flat_kernel[(triton_cdiv(n, _FLAT_BLOCK),)](
            x, bits, n, BLOCK=_FLAT_BLOCK, num_warps=_FLAT_WARPS
        )
        return bits

    def _cast_flat(
        self,
        x,
        fmt,
        scale,
        saturate,
        rand_bits,
        seed,
        *,
        fused_amax,
        amax_in=None,
        scale_out=None,
        scale_inv_out=None,
        margin=0,
        power_of_two=False,
    ):
        n = x.numel()
        out = torch.empty(x.shape, dtype=torch.uint8, device=x.device)
        amax_out = torch.zeros(1, dtype=torch.int32, device=x.device) if fused_amax else out
        words = _rand_words(rand_bits)
        scale_arg = scale.to(torch.float32) if scale is not None else out
        K.cast_flat_kernel[(triton_cdiv(n, _FLAT_BLOCK),)](
            x,
            scale_arg,
            out,
            words if words is not None else out,
            amax_in if amax_in is not None else out,
            amax_out,
            scale_out if scale_out is not None else out,
            scale_inv_out if scale_inv_out is not None else out,
            n,
            0 if seed is None else int(seed),
            RAND=_rand_mode(words, seed),
            SCALE_FROM_AMAX=amax_in is not None,
            FUSED_AMAX=fused_amax,
            BLOCK=_FLAT_BLOCK,
            num_warps=_FLAT_WARPS,
            **fmt_constants(fmt, saturate),
            **_scale_constants(fmt, margin, power_of_two),
        )
        amax = amax_out.view(torch.float32).reshape(()) if fused_amax else None
        return out, amax

    def _cast_2d(self, x, fmt, scale, granularity, saturate, rand_bits, seed):
        r, c = as_2d_shape(x.shape)
        x2 = x.reshape(r, c)
        out = torch.empty((r, c), dtype=torch.uint8, device=x.device)
        s2, gr, gc = _scale_2d(scale.to(torch.float32), granularity, (r, c))
        words = _rand_words(rand_bits)
        br, bc = 16, 256
        consts = fmt_constants(fmt, saturate)
        if not x2.is_contiguous():
            # Triton 3.6 on sm_90 was seen to compile the hardware conversion plus the
            # non-saturating overflow fix-up wrongly for strided views (transposed and
            # every-other-column inputs: some overflowing and NaN inputs got wrong codes;
            # tests/test_nvidia_gpu.py::test_cast_of_2d_views_bit_exact). The integer
            # encoder is the contract's own rule, so strided views use it.
            consts = {**consts, "HW": 0}
        K.cast_2d_kernel[(triton_cdiv(r, br), triton_cdiv(c, bc))](
            x2,
            s2,
            out,
            words if words is not None else out,
            r,
            c,
            x2.stride(0),
            x2.stride(1),
            s2.stride(0),
            s2.stride(1),
            0 if seed is None else int(seed),
            RAND=_rand_mode(words, seed),
            GR=gr,
            GC=gc,
            BLOCK_R=br,
            BLOCK_C=bc,
            **consts,
        )
        return out.reshape(x.shape)

    def _quantize_tensorwise(self, x, fmt, margin, power_of_two, saturate) -> Fp8Tensor:
        bits = self._amax_bits(x)
        scale = torch.empty((), dtype=torch.float32, device=x.device)
        scale_inv = torch.empty((), dtype=torch.float32, device=x.device)
        codes, _ = self._cast_flat(
            x,
            fmt,
            None,
            saturate,
            None,
            None,
            fused_amax=False,
            amax_in=bits,
            scale_out=scale,
            scale_inv_out=scale_inv,
            margin=margin,
            power_of_two=power_of_two,
        )
        return Fp8Tensor(_view_fmt(codes, fmt), scale, fmt, TENSORWISE, scale_inv)

    def _quantize_blocks(self, x, fmt, granularity, block, margin, power_of_two, saturate):
        transpose, row_blocks, cols_per_program, block_r, block_c = block
        shape2d = as_2d_shape(x.shape)
        srows, scols = granularity.scale_shape(shape2d)
        x2 = x.reshape(shape2d)
        out = torch.empty(shape2d, dtype=torch.uint8, device=x.device)
        scale = torch.empty((srows, scols), dtype=torch.float32, device=x.device)
        scale_inv = torch.empty_like(scale)
        xv, ov, sv, siv = x2, out, scale, scale_inv
        if transpose:  # columnwise / 128x1: the row kernel on the transposed views
            xv, ov, sv, siv = x2.t(), out.t(), scale.t(), scale_inv.t()
        r, c = xv.shape
        grid_c = 1 if cols_per_program == 0 else triton_cdiv(c, cols_per_program)
        K.quantize_blocks_kernel[(triton_cdiv(r, block_r), grid_c)](
            xv,
            ov,
            sv,
            siv,
            r,
            c,
            xv.stride(0),
            xv.stride(1),
            ov.stride(0),
            ov.stride(1),
            sv.stride(0),
            sv.stride(1),
            ROW_BLOCKS=row_blocks,
            COLS_PER_PROGRAM=cols_per_program,
            BLOCK_R=block_r,
            BLOCK_C=block_c,
            num_warps=4,
            **fmt_constants(fmt, saturate),
            **_scale_constants(fmt, margin, power_of_two),
        )
        codes = _view_fmt(out.reshape(x.shape), fmt)
        return Fp8Tensor(codes, scale, fmt, granularity, scale_inv)


def _fused_block_layout(granularity: Granularity, x: torch.Tensor):
    """(transpose, row_blocks, cols_per_program, BLOCK_R, BLOCK_C) of the fused quantiser."""
    gr, gc = granularity.rows, granularity.cols
    if x.dim() == 0:
        return None
    transpose = False
    if gr != 1 and gc == 1:  # columnwise and 128x1: rows of the transposed view
        transpose, gr, gc = True, 1, gr
    if gr == 1 and gc == -1:  # rowwise
        return (transpose, True, 0, 4, 1024)
    if gr == 1 and gc in (32, 64, 128):
        return (transpose, True, gc, 32, gc)
    if gr == gc == 128 and not transpose:
        return (False, False, 128, 128, 128)
    return None


def _scale_2d(
    scale: torch.Tensor, granularity: Granularity, shape2d: tuple[int, int]
) -> tuple[torch.Tensor, int, int]:
    """The scale as a 2-D tensor and its block shape for the kernels (0: whole dimension)."""
    if granularity.is_tensorwise:
        return scale.reshape(1, 1), 0, 0
    br, bc = granularity.block(shape2d)
    gr = 0 if granularity.rows == -1 else br
    gc = 0 if granularity.cols == -1 else bc
    return scale.reshape(granularity.scale_shape(shape2d)), gr, gc


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


@lru_cache(maxsize=1)
def _kernels():
    """The kernels module, imported on first use (so that importing this needs no triton)."""
    from . import _triton_kernels

    return _triton_kernels


class _LazyKernels:
    """Attribute access to :func:`_kernels`'s module (``K.some_kernel``)."""

    def __getattr__(self, name: str):
        return getattr(_kernels(), name)


K = _LazyKernels()
