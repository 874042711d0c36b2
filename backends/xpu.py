"""The ``xpu`` backend: Intel GPUs (Arc, Data Center GPU Max) through PyTorch's XPU device.

GEMMs use torch's scaled matrix product on XPU (``torch.nn.functional.scaled_mm`` where
torch has it, else ``torch._scaled_mm``), which PyTorch registers from 2.10 on (oneDNN kernels
for tensorwise and rowwise scaling of E4M3FN and E5M2 operands: pytorch/pytorch PRs #165978
and #166056); other granularities and formats dequantise to fp32 and multiply. Casts are the
``cpu`` backend's device-generic torch code (``.to(float8)`` with the contract's corrections
for overflow, non-finite inputs, Gaudi2's range and E8M0), run on the XPU tensors.

Available only with torch >= 2.10 and a visible XPU (``torch.xpu.is_available()``). Nothing
here has run on an Intel GPU yet: the conformance suite is how a machine with one checks it
(``portable-fp8 conformance --backend xpu``).
"""

from __future__ import annotations

from functools import cached_property

import torch

from portable_fp8.dispatch.backend import Backend, Capabilities
from portable_fp8.dispatch.hookspecs import hookimpl
from portable_fp8.numerics.formats import FORMATS, element_formats
from portable_fp8.numerics.gemm import FP32_ACCUMULATOR
from portable_fp8.numerics.granularity import GRANULARITIES

from .cpu import CpuBackend, probe_scaled_mm

__all__ = ["XpuBackend", "MIN_TORCH", "portable_fp8_backends"]

#: First PyTorch release with torch._scaled_mm registered for XPU.
MIN_TORCH = (2, 10)


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


class XpuBackend(CpuBackend):
    """torch._scaled_mm and torch casts on Intel GPUs, held to the contract."""

    name = "xpu"
    priority = 40

    def __init__(self) -> None:
        names = [f.name for f in element_formats()]
        self.capabilities = Capabilities(
            devices=frozenset({"xpu"}),
            cast_formats=frozenset(FORMATS),
            gemm_formats=frozenset((a, b) for a in names for b in names),
            granularities=frozenset(GRANULARITIES),
            accumulator=FP32_ACCUMULATOR,
            notes=(
                "torch._scaled_mm (oneDNN) on XPU for tensorwise and rowwise E4M3FN/E5M2; "
                "other GEMMs multiply dequantised operands in fp32",
                "accumulator assumed fp32 (unverified on hardware: the suite measures it)",
            ),
        )

    def unavailable_reason(self) -> str | None:
        if _torch_version() < MIN_TORCH:
            return (
                f"torch {torch.__version__} has no torch._scaled_mm for XPU "
                f"(needs torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]})"
            )
        xpu = getattr(torch, "xpu", None)
        if xpu is None or not xpu.is_available():
            return "no Intel GPU is visible to torch (torch.xpu.is_available() is False)"
        return None

    @cached_property
    def _scaled_mm_pairs(self) -> frozenset[tuple[str, str]]:
        """The granularity pairs torch._scaled_mm runs on this XPU (probed once)."""
        return probe_scaled_mm("xpu")

    def describe(self) -> dict:
        return {
            "torch": torch.__version__,
            "device": torch.xpu.get_device_name() if torch.xpu.is_available() else None,
            "gemm_path": "torch._scaled_mm on XPU for "
            + "/".join(sorted(a for a, _ in self._scaled_mm_pairs))
            + " E4M3FN/E5M2, else fp32 matmul of dequantised operands"
            if self._has_scaled_mm
            else "fp32 matmul of dequantised operands (torch._scaled_mm failed on this XPU)",
            "cast_path": "torch .to(float8) on XPU with contract corrections",
        }


@hookimpl
def portable_fp8_backends() -> list[Backend]:
    return [XpuBackend()]
