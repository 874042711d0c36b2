"""STAND-IN, NOT HARDWARE: the Gaudi bridge's three FP8 ops, written from their documented
semantics with the portable-fp8 emulator, on CPU tensors.

It exists so that the ``gaudi`` backend's argument mapping (scale inversion, scale shapes,
transposes, output dtypes, the stochastic-rounding flag, the fused amax) can be tested on a
machine without a Gaudi. Agreement with this stand-in says the adapter passes the right
arguments for the semantics in ``docs/notes/gaudi_ops.md``; it says nothing about what the
hardware computes. Where that note marks a behaviour unverified, the choice made here is
stated in a comment.

Registered with ``torch.library`` under the namespace ``hpu`` with the bridge's exact schema
strings (including the ``.scalar`` and ``.scalar_list`` overloads), CPU only. The Gaudi
generation (``gaudi2``: E4M3 saturates at 240; ``gaudi3``: 448) is :data:`STATE`'s, set by
:func:`set_generation` or the environment variable ``GAUDI_STANDIN_GENERATION``.
"""

from __future__ import annotations

import math
import os

import torch

from portable_fp8.numerics.cast import (
    amax,
    as_fp8_tensor,
    codes_of,
    codes_to_float,
    round_to_codes,
    scaled_fp32,
)
from portable_fp8.numerics.formats import E4M3_GAUDI2, E4M3FN, E5M2, Format

__all__ = ["STATE", "SCHEMAS", "set_generation", "register", "calls", "clear_log"]

#: Generation and call log of the stand-in (the log lets tests check what the adapter passed).
STATE: dict = {"generation": os.environ.get("GAUDI_STANDIN_GENERATION", "gaudi2"), "log": []}

#: The bridge's schemas, verbatim (docs/notes/gaudi_ops.md section 0).
SCHEMAS: dict[str, str] = {
    "cast_to_fp8_v2": "cast_to_fp8_v2(Tensor input, Tensor? scale=None, "
    "bool stochastic_rounding=False, bool is_amax=False, ScalarType dtype=None, "
    "int[]? scale_shape=None) -> (Tensor, Tensor)",
    "cast_to_fp8_v2.scalar": "cast_to_fp8_v2.scalar(Tensor input, float scale, "
    "bool stochastic_rounding=False, bool is_amax=False, ScalarType dtype=None, "
    "int[]? scale_shape=None) -> (Tensor, Tensor)",
    "cast_to_fp8_v2.scalar_list": "cast_to_fp8_v2.scalar_list(Tensor input, float[] scale, "
    "bool stochastic_rounding=False, bool is_amax=False, ScalarType dtype=None, "
    "int[]? scale_shape=None) -> (Tensor, Tensor)",
    "cast_from_fp8": "cast_from_fp8(Tensor input, Tensor? scale, ScalarType out_dtype, "
    "int[]? scale_shape=None) -> Tensor",
    "cast_from_fp8.scalar": "cast_from_fp8.scalar(Tensor input, float scale, "
    "ScalarType out_dtype, int[]? scale_shape=None) -> Tensor",
    "cast_from_fp8.scalar_list": "cast_from_fp8.scalar_list(Tensor input, float[] scale, "
    "ScalarType out_dtype, int[]? scale_shape=None) -> Tensor",
    "fp8_gemm_v2": "fp8_gemm_v2(Tensor A, bool trans_A, Tensor B, bool trans_B, Tensor? D, "
    "ScalarType out_dtype, Tensor? A_scale_inv=None, Tensor? B_scale_inv=None, "
    "Tensor? bias=None, bool accumulate=False, int[]? B_scale_shape=None) -> Tensor",
}

_LIBS: list = []  # keeps the torch.library registrations alive for the process
_SR_GENERATOR = torch.Generator().manual_seed(0x6A0D1)


def set_generation(generation: str) -> None:
    """Make the stand-in behave as ``"gaudi2"`` or ``"gaudi3"``."""
    if generation not in ("gaudi2", "gaudi3"):
        raise ValueError(f"generation must be gaudi2 or gaudi3, not {generation!r}")
    STATE["generation"] = generation


def calls() -> list[tuple[str, dict]]:
    """The (op, arguments) log since the last :func:`clear_log`."""
    return STATE["log"]


def clear_log() -> None:
    STATE["log"].clear()


def _format(dtype: torch.dtype) -> Format:
    """The encoding the hardware gives a torch FP8 dtype (Gaudi2 E4M3 stops at 240)."""
    if dtype == torch.float8_e4m3fn:
        return E4M3_GAUDI2 if STATE["generation"] == "gaudi2" else E4M3FN
    if dtype == torch.float8_e5m2:
        return E5M2
    raise RuntimeError(f"stand-in hpu op: unsupported FP8 dtype {dtype}")


def _scale(scale, like: torch.Tensor, shape) -> torch.Tensor | None:
    """The scale as an fp32 tensor, reshaped to ``shape`` when given (OPS HandleScaleTensor,
    ValidateScaleShape: element counts must match)."""
    if scale is None:
        return None
    s = torch.as_tensor(scale, dtype=torch.float32, device=like.device)
    if shape is not None:
        if s.numel() != math.prod(shape):
            raise RuntimeError(f"scale has {s.numel()} elements, scale_shape {list(shape)}")
        s = s.reshape(shape)
    torch.broadcast_shapes(s.shape, like.shape)  # raises like the bridge on a bad shape
    return s


def _cast_to_fp8_v2(
    input, scale=None, stochastic_rounding=False, is_amax=False, dtype=None, scale_shape=None
):
    STATE["log"].append(("cast_to_fp8_v2", dict(locals())))  # arguments as passed
    dtype = torch.float8_e4m3fn if dtype is None else dtype  # [UNVERIFIED] default dtype
    fmt = _format(dtype)
    if input.dtype == dtype:  # an FP8 tensor of the target dtype passes through
        if is_amax:
            raise RuntimeError("CastToFp8V2 must have no amax for float8")
        return input.clone(), input.new_empty(0, dtype=torch.float32)
    if input.dtype not in (torch.float32, torch.bfloat16):
        raise RuntimeError(f"CastToFp8V2: input dtype {input.dtype} not supported (fp32, bf16)")
    y = scaled_fp32(input, _scale(scale, input, scale_shape))
    bits = None
    if stochastic_rounding:  # the bridge seeds its own RNG; the stand-in has one generator
        bits = torch.randint(-(2**31), 2**31, y.shape, dtype=torch.int32, generator=_SR_GENERATOR)
    codes = round_to_codes(y, fmt, saturate=True, rand_bits=bits)  # overflow saturates
    out_amax = amax(input) if is_amax else input.new_empty(0, dtype=torch.float32)
    return as_fp8_tensor(codes, fmt), out_amax


def _cast_from_fp8(input, scale, out_dtype, scale_shape=None):
    STATE["log"].append(("cast_from_fp8", dict(locals())))  # arguments as passed
    if out_dtype not in (torch.float32, torch.bfloat16):
        raise RuntimeError("CastFromFp8 output dtype must be equal to float or bfloat16")
    values = codes_to_float(codes_of(input), _format(input.dtype))
    s = _scale(scale, values, scale_shape)
    return (values if s is None else values * s).to(out_dtype)


def _decode64(t: torch.Tensor, trans: bool) -> torch.Tensor:
    if t.dtype not in (torch.float8_e4m3fn, torch.float8_e5m2):
        raise RuntimeError(f"fp8_gemm_v2: operand dtype {t.dtype} is not FP8")
    v = codes_to_float(codes_of(t), _format(t.dtype)).double()
    return v.transpose(-2, -1) if trans else v


def _fp8_gemm_v2(
    A,
    trans_A,
    B,
    trans_B,
    D,
    out_dtype,
    A_scale_inv=None,
    B_scale_inv=None,
    bias=None,
    accumulate=False,
    B_scale_shape=None,
):
    STATE["log"].append(("fp8_gemm_v2", dict(locals())))  # arguments as passed
    if out_dtype not in (torch.float32, torch.bfloat16):  # the bridge wrapper's check
        raise RuntimeError(f"fp8_gemm_v2: out_dtype {out_dtype} not supported")
    # Products and their float64 sums are exact for E4M3 (see numerics/gemm.py); the
    # hardware's fp32 accumulation is [UNVERIFIED]: the stand-in models an exact sum.
    out = _decode64(A, trans_A) @ _decode64(B, trans_B)
    if A_scale_inv is not None:
        out = out * A_scale_inv.double()  # the A scale gets no reshape (OPS)
    sb = _scale(B_scale_inv, out, B_scale_shape)
    if sb is not None:
        out = out * sb.double()
    if bias is not None:
        out = out + bias.double()
    if accumulate:
        if D is None:
            raise RuntimeError("Accumulation tensor must be provided at index 4")
        out = out + D.double()
    return out.to(torch.float32).to(out_dtype)


def register(namespace: str = "hpu") -> None:
    """Define the three ops (and overloads) in ``namespace``; once per process."""
    if _LIBS:
        return
    lib = torch.library.Library(namespace, "DEF")
    for schema in SCHEMAS.values():
        lib.define(schema)
    impls = {
        "cast_to_fp8_v2": _cast_to_fp8_v2,
        "cast_to_fp8_v2.scalar": _cast_to_fp8_v2,
        "cast_to_fp8_v2.scalar_list": _cast_to_fp8_v2,
        "cast_from_fp8": _cast_from_fp8,
        "cast_from_fp8.scalar": _cast_from_fp8,
        "cast_from_fp8.scalar_list": _cast_from_fp8,
        "fp8_gemm_v2": _fp8_gemm_v2,
    }
    for name, fn in impls.items():
        lib.impl(name, fn, "CPU")
    _LIBS.append(lib)
