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

The margin is an ``int`` with ``0 <= margin <= max_margin(fmt)``, where
``max_margin(fmt) = floor(log2(fmt.max)) - 2`` (e4m3fn 6, e5m2 and e5m2fnuz 13, e4m3fnuz
and e4m3_gaudi2 5). Derivation: the smallest scale comes from the largest finite fp32
amax, ``A = (2 - 2**-23) * 2**127 < 2**128``. With ``fmt.max = 2**e * (1 + f)``,
``e = floor(log2(fmt.max))``, ``fmt.max / A > 2**(e - 128)`` (and its fp32 rounding is
still ``>= 2**(e - 128)``, a normal number), so dividing by ``2**margin`` with
``margin <= e - 2`` leaves a scale ``>= 2**-126``: a positive *normal* fp32 for every
amax, whose reciprocal is finite. One more and the scale of a large amax is subnormal
(its reciprocal overflows); negative margins would map amax beyond the format's range.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..errors import Fp8TypeError, Fp8ValueError
from .formats import Format

__all__ = [
    "scale_from_amax",
    "round_scale_to_power_of_two",
    "round_scale_to_choices",
    "mx_scale_from_amax",
    "reciprocal",
    "max_margin",
    "check_margin",
]


_MAX_SCALE = 2.0**127


def reciprocal(scale: torch.Tensor) -> torch.Tensor:
    """``fp32(1 / scale)``: the dequantisation factor of a quantisation scale."""
    return torch.reciprocal(scale.to(torch.float32))


def max_margin(fmt: Format) -> int:
    """The largest margin that keeps every scale of ``fmt`` a positive normal fp32 number:
    ``floor(log2(fmt.max)) - 2`` (derivation in the module docstring)."""
    return math.frexp(fmt.max)[1] - 1 - 2


def check_margin(margin: object, fmt: Format, what: str = "margin") -> int:
    """``margin`` if it is an ``int`` (not a bool) in ``[0, max_margin(fmt)]``."""
    if margin.__class__ is not int:
        raise Fp8TypeError(f"{what} must be an int, got {type(margin).__name__} {margin!r}")
    top = max_margin(fmt)
    if not 0 <= margin <= top:  # type: ignore[operator]
        raise Fp8ValueError(
            f"{what} must be in [0, {top}] for {fmt.name} (larger margins make the scale of a "
            f"large amax subnormal or zero), got {margin}"
        )
    return margin  # type: ignore[return-value]


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
    the largest allowed value (the smallest one where none is small enough). ``margin``:
    see :func:`check_margin` (Fp8TypeError / Fp8ValueError outside its range).
    """
    check_margin(margin, fmt)
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
