"""The ``cpu`` backend: PyTorch's native CPU kernels (oneDNN), held to the contract.

Casts use torch's own ``.to(float8_*)`` and then correct the elements where torch's cast is
known to differ between versions or from the contract: overflow and non-finite inputs
(torch 2.13 saturates them, torch 2.11 returns NaN; the contract decides by ``saturate``),
Gaudi2's 240 limit (a range torch does not know) and E8M0 (whose torch cast maps zero and
negatives differently). Stochastic rounding uses the shared integer implementation.

GEMMs use ``torch._scaled_mm`` (oneDNN) for tensorwise and rowwise scaling of E4M3FN/E5M2
operands where the installed torch has a CPU kernel for it; everything else (block and MX
scaling, FNUZ formats) dequantises each operand to fp32 (one rounding per element, exact for
power-of-two scales) and multiplies in fp32. Both accumulate in fp32.
"""

from __future__ import annotations

from functools import cached_property

import torch

from portable_fp8.backend import Backend, Capabilities
from portable_fp8.emulator.cast import as_fp8_tensor, codes_of, round_to_codes
from portable_fp8.emulator.gemm import FP32_ACCUMULATOR
from portable_fp8.formats import FORMATS, Format, element_formats
from portable_fp8.granularity import GRANULARITIES, Granularity, as_2d_shape
from portable_fp8.hookspecs import hookimpl
from portable_fp8.tensor import Fp8Tensor

__all__ = ["CpuBackend", "portable_fp8_backends"]

_SCALED_MM_FORMATS = ("e4m3fn", "e5m2", "e4m3_gaudi2")


def _per_element(scale: torch.Tensor, granularity: Granularity, shape) -> torch.Tensor:
    if granularity.is_tensorwise:
        return scale.reshape(())
    return granularity.expand(scale, as_2d_shape(shape)).reshape(shape)


class CpuBackend(Backend):
    """PyTorch's CPU kernels, with contract corrections where torch's cast differs."""

    name = "cpu"
    priority = 10

    def __init__(self) -> None:
        names = [f.name for f in element_formats()]
        self.capabilities = Capabilities(
            devices=frozenset({"cpu"}),
            cast_formats=frozenset(FORMATS),
            gemm_formats=frozenset((a, b) for a in names for b in names),
            granularities=frozenset(GRANULARITIES),
            accumulator=FP32_ACCUMULATOR,
            notes=("fp32 accumulation (oneDNN or torch fp32 matmul)",),
        )

    @cached_property
    def _has_scaled_mm(self) -> bool:
        """Whether this torch has a CPU kernel for torch._scaled_mm (probed once)."""
        try:
            a = torch.ones(16, 16, dtype=torch.float8_e4m3fn)
            one = torch.ones((), dtype=torch.float32)
            torch._scaled_mm(a, a.t(), one, one, out_dtype=torch.float32)
            return True
        except Exception:
            return False

    def describe(self) -> dict:
        return {
            "torch": torch.__version__,
            "gemm_path": "torch._scaled_mm (oneDNN) for tensorwise/rowwise E4M3FN/E5M2, "
            "else fp32 matmul of dequantised operands"
            if self._has_scaled_mm
            else "fp32 matmul of dequantised operands (no CPU torch._scaled_mm in this torch)",
            "cast_path": "torch .to(float8) with contract corrections",
        }

    # -- casts -------------------------------------------------------------------------------

    def cast_to_fp8(self, x, fmt: Format, scale, granularity, *, saturate, rand_bits):
        y = x.to(torch.float32) * _per_element(scale, granularity, x.shape)
        dtype = fmt.torch_dtype
        if rand_bits is not None or fmt.is_scale_format or dtype == torch.uint8:
            codes = round_to_codes(y, fmt, saturate=saturate, rand_bits=rand_bits)
            return as_fp8_tensor(codes, fmt)
        codes = y.to(dtype).view(torch.uint8)
        # Where torch's cast may disagree with the contract: overflow and non-finite inputs.
        risky = ~torch.isfinite(y) | (y.abs() > fmt.max)
        if bool(risky.any()):
            codes = codes.clone()
            codes[risky] = round_to_codes(y[risky], fmt, saturate=saturate)
        return codes.view(dtype)

    def cast_from_fp8(self, q, fmt: Format, scale_inv, granularity, out_dtype):
        values = self._decode(q, fmt)
        return (values * _per_element(scale_inv, granularity, q.shape)).to(out_dtype)

    @staticmethod
    def _decode(q: torch.Tensor, fmt: Format) -> torch.Tensor:
        if q.dtype == torch.uint8 or fmt.is_scale_format:
            return fmt.code_values.to(torch.float32)[codes_of(q).to(torch.int64)]
        return q.to(torch.float32)

    # -- GEMM --------------------------------------------------------------------------------

    def scaled_mm(self, a: Fp8Tensor, b: Fp8Tensor, *, out_dtype, bias, c):
        native = (
            self._has_scaled_mm
            and a.format.name in _SCALED_MM_FORMATS
            and b.format.name in _SCALED_MM_FORMATS
            and (a.granularity.name, b.granularity.name)
            in {("tensorwise", "tensorwise"), ("rowwise", "columnwise")}
        )
        if native:
            out = torch._scaled_mm(
                a.data.contiguous(),
                b.data.t().contiguous().t(),
                a.scale_inv,
                b.scale_inv,
                out_dtype=torch.float32,
            )
        else:
            a32 = self._decode(a.data, a.format) * a.expanded_scale_inv()
            b32 = self._decode(b.data, b.format) * b.expanded_scale_inv()
            out = a32 @ b32
        if bias is not None:
            out = out + bias.to(torch.float32)
        if c is not None:
            out = out + c.to(torch.float32)
        return out.to(out_dtype)


@hookimpl
def portable_fp8_backends() -> list[Backend]:
    return [CpuBackend()]
