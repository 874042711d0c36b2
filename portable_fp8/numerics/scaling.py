"""From amax to scale: the scale computations every recipe and backend shares.

Convention (one, everywhere in portable-fp8): a **scale is the quantisation multiplier**.
``cast_to_fp8(x, scale=s)`` stores ``x * s``; dequantising multiplies by ``fp32(1 / s)``.
Backends that want dequantisation factors (torch._scaled_mm, Gaudi's ``*_scale_inv``
arguments, MX's E8M0 block exponents) receive ``fp32(1 / s)`` at their boundary.

The scale that maps ``amax`` onto a format's range is ``s = max / (amax * 2**margin)``
(TransformerEngine's convention for the margin). Degenerate ``amax`` gives a defined scale:
zero, inf or NaN amax -> ``1.0`` (all-zero tensors quantise to zero; inf and NaN propagate
through the cast as the contract says); a scale that would overflow fp32 (subnormal amax)
is clamped to the largest finite fp32 power of two, ``2**127``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .formats import Format

__all__ = [
    "GAUDI2_HW_ALIGNED_SCALES",
    "scale_from_amax",
    "round_scale_to_power_of_two",
    "round_scale_to_choices",
    "mx_scale_from_amax",
    "reciprocal",
]

#: Quantisation scales Gaudi2's E4M3 path applies without extra work: 2**(bias - 7) for the
#: exponent biases {3, 7, 11, 15} (Intel Neural Compressor, fp8_quant ``EXP_BIAS_SETS``).
#: Gaudi3 accepts any power of two.
GAUDI2_HW_ALIGNED_SCALES: tuple[float, ...] = (2.0**-4, 1.0, 2.0**4, 2.0**8)

_MAX_SCALE = 2.0**127


def reciprocal(scale: torch.Tensor) -> torch.Tensor:
    """``fp32(1 / scale)``: the dequantisation factor of a quantisation scale."""
    return torch.reciprocal(scale.to(torch.float32))


def scale_from_amax(
    amax: torch.Tensor,
    fmt: Format,
    *,
    margin: int = 0,
    power_of_two: bool = False,
    choices: Sequence[float] | None = None,
) -> torch.Tensor:
    """Quantisation scale that maps ``amax`` to ``fmt.max / 2**margin`` (elementwise, fp32).

    ``power_of_two`` rounds the scale down to a power of two; ``choices`` rounds it down to
    the largest allowed value (the smallest one where none is small enough).
    """
    amax = amax.to(torch.float32)
    degenerate = (amax == 0) | ~torch.isfinite(amax)
    safe = torch.where(degenerate, 1.0, amax)
    # A tensor numerator: torch evaluates `python_float / tensor` as a reciprocal followed by
    # a multiplication (two roundings); the contract's scale is one IEEE fp32 division.
    scale = torch.full_like(safe, fmt.max) / safe / 2.0**margin
    scale = torch.where(degenerate, 1.0, scale).clamp(max=_MAX_SCALE)
    if power_of_two:
        scale = round_scale_to_power_of_two(scale)
    if choices is not None:
        scale = round_scale_to_choices(scale, choices)
    return scale


def round_scale_to_power_of_two(scale: torch.Tensor) -> torch.Tensor:
    """Largest power of two <= ``scale`` (so ``amax * scale`` still fits), as fp32."""
    mantissa, exponent = torch.frexp(scale.to(torch.float32))
    return torch.ldexp(torch.ones_like(mantissa), exponent - 1)


def round_scale_to_choices(scale: torch.Tensor, choices: Sequence[float]) -> torch.Tensor:
    """Largest allowed scale <= ``scale``; the smallest allowed one if none is."""
    allowed = torch.tensor(sorted(choices), dtype=torch.float32, device=scale.device)
    idx = torch.searchsorted(allowed, scale.to(torch.float32).contiguous(), right=True) - 1
    return allowed[idx.clamp(min=0)]


def mx_scale_from_amax(amax: torch.Tensor, fmt: Format) -> torch.Tensor:
    """OCP MX block scale as a quantisation scale: ``2**(emax_elem - floor(log2 amax))``.

    The OCP MX v1.0 shared exponent is ``X = 2**(floor(log2 amax) - emax_elem)``, with
    ``emax_elem`` the exponent of the element format's largest normal; we return ``1 / X``.
    Elements that then exceed ``fmt.max`` saturate, as the MX specification prescribes.
    Zero or non-finite amax gives 1.
    """
    amax = amax.to(torch.float32)
    degenerate = (amax == 0) | ~torch.isfinite(amax)
    _, exponent = torch.frexp(torch.where(degenerate, 1.0, amax))
    emax_elem = torch.frexp(torch.tensor(fmt.max))[1].item() - 1
    shift = (emax_elem - (exponent - 1)).clamp(-127, 127)
    return torch.where(degenerate, 1.0, torch.ldexp(torch.ones_like(amax), shift))
