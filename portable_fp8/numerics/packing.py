"""Dense packing of sub-byte codes (one code per uint8, low bits) into bytes.

* FP4 (:func:`pack_fp4`): two 4-bit codes a byte, element ``2i`` in the low nibble and
  ``2i + 1`` in the high nibble: the order of ONNX's FLOAT4E2M1 and of torch's
  ``float4_e2m1fn_x2`` (the first element in the least significant bits).
* FP6 (:func:`pack_fp6`): four 6-bit codes in three bytes, little-endian: the 24-bit word
  ``c0 | c1 << 6 | c2 << 12 | c3 << 18`` stored low byte first (element ``4i`` in the low
  six bits of byte ``3i``). This is our choice; the OCP MX v1.0 spec leaves storage open.

Both work along the last dimension, whose length must be a multiple of the group (2 or 4
codes); a code above the width raises, so no bits are dropped silently.
"""

from __future__ import annotations

import torch

from ..errors import Fp8TypeError, Fp8ValueError

__all__ = ["pack_fp4", "unpack_fp4", "pack_fp6", "unpack_fp6"]


def _check_packed(packed: torch.Tensor, group: int, what: str, noun: str = "packed bytes") -> None:
    """uint8, at least 1-D, last dimension a multiple of ``group``."""
    if packed.dtype != torch.uint8:
        raise Fp8TypeError(f"{what}: {noun} must be uint8, got {packed.dtype}")
    if packed.dim() == 0 or packed.shape[-1] % group:
        raise Fp8ValueError(
            f"{what}: the last dimension must be a multiple of {group}, got shape "
            f"{tuple(packed.shape)}"
        )


def _check_codes(codes: torch.Tensor, bits: int, group: int, what: str) -> None:
    """As :func:`_check_packed`, and every code fits in ``bits`` bits."""
    _check_packed(codes, group, what, "codes")
    if codes.numel() and int(codes.max()) >= 1 << bits:
        raise Fp8ValueError(f"{what}: a code does not fit in {bits} bits")


def pack_fp4(codes: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit codes (uint8, last dimension even) two a byte, element 2i low."""
    _check_codes(codes, 4, 2, "pack_fp4")
    pairs = codes.reshape(*codes.shape[:-1], -1, 2)
    return pairs[..., 0] | (pairs[..., 1] << 4)


def unpack_fp4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_fp4`: uint8 codes, twice the last dimension."""
    _check_packed(packed, 1, "unpack_fp4")
    pairs = torch.stack((packed & 0xF, packed >> 4), dim=-1)
    return pairs.reshape(*packed.shape[:-1], -1)


def pack_fp6(codes: torch.Tensor) -> torch.Tensor:
    """Pack 6-bit codes (uint8, last dimension a multiple of 4) four into three bytes."""
    _check_codes(codes, 6, 4, "pack_fp6")
    q = codes.reshape(*codes.shape[:-1], -1, 4).to(torch.int32)
    word = q[..., 0] | (q[..., 1] << 6) | (q[..., 2] << 12) | (q[..., 3] << 18)
    out = torch.stack((word & 0xFF, (word >> 8) & 0xFF, word >> 16), dim=-1)
    return out.to(torch.uint8).reshape(*codes.shape[:-1], -1)


def unpack_fp6(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_fp6`: uint8 codes, 4/3 of the last dimension."""
    _check_packed(packed, 3, "unpack_fp6")
    b = packed.reshape(*packed.shape[:-1], -1, 3).to(torch.int32)
    word = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
    out = torch.stack([(word >> s) & 0x3F for s in (0, 6, 12, 18)], dim=-1)
    return out.to(torch.uint8).reshape(*packed.shape[:-1], -1)
