"""torch's scaled FP8 matrix product for the backends that call it (``cpu``, ``xpu``, ``cuda``).

The public ``torch.nn.functional.scaled_mm`` where the installed torch has it, else the
private ``torch._scaled_mm`` (older torch). Both compute ``(a @ b) * scale_a * scale_b``
with dequantisation factors (``fp32(1 / s)``) as scales: one 0-d factor each (tensorwise),
or ``(M, 1)`` and ``(1, N)`` factors (rowwise A, columnwise B). The two paths give
bit-identical results (tests/test_torch_scaled_mm.py, on CPU, where torch has both).

The ``cuda`` backend calls it for tensorwise and rowwise GEMMs; its 1x128 x 128x128 GEMMs
keep ``torch._scaled_mm``, the entry their scale layouts were verified through. The public
function's argument checks in Python cost about 2 us of host time per call (measured on CPU:
30.3 vs 28.4 us for a 16x32x16 product).
"""

from __future__ import annotations

import torch

__all__ = ["has_public_scaled_mm", "torch_scaled_mm"]


def has_public_scaled_mm() -> bool:
    """True where this torch has ``torch.nn.functional.scaled_mm``."""
    return hasattr(torch.nn.functional, "scaled_mm") and hasattr(torch.nn.functional, "ScalingType")


#: Device types on which this torch's public entry raised NotImplementedError: torch 2.11
#: has ``torch.nn.functional.scaled_mm`` but its kernel (``aten::_scaled_mm_v2``) only for
#: CUDA, while ``torch._scaled_mm`` also runs on CPU. Learnt once per device type.
_PUBLIC_MISSING_ON: set[str] = set()


def torch_scaled_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    *,
    out_dtype: torch.dtype,
    use_fast_accum: bool = False,
) -> torch.Tensor:
    """``(a @ b) * scale_a * scale_b`` through torch: tensorwise when both factors are
    0-d (or one element), else rowwise (``(M, 1)`` x ``(1, N)``). The public entry where
    this torch has it for ``a``'s device type, else the private one."""
    if has_public_scaled_mm() and a.device.type not in _PUBLIC_MISSING_ON:
        f = torch.nn.functional
        kind = (
            f.ScalingType.TensorWise
            if scale_a.numel() == 1 and scale_b.numel() == 1
            else f.ScalingType.RowWise
        )
        try:
            return f.scaled_mm(
                a,
                b,
                scale_a,
                kind,
                scale_b,
                kind,
                output_dtype=out_dtype,
                use_fast_accum=use_fast_accum,
            )
        except NotImplementedError:  # no kernel of the public op for this device type
            _PUBLIC_MISSING_ON.add(a.device.type)
    return torch._scaled_mm(
        a, b, scale_a, scale_b, out_dtype=out_dtype, use_fast_accum=use_fast_accum
    )
