"""What a backend is: its declared capabilities and the primitives it implements.

A backend receives arguments the op layer has already validated and normalised (formats as
:class:`Format`, granularities as :class:`Granularity`, scales as fp32 tensors in the
granularity's layout, on the input's device). It returns results in the contract's terms.
Subclasses override the primitives their hardware does well; the defaults compose them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..errors import NotSupportedError
from ..numerics.cast import amax as _amax
from ..numerics.formats import Format
from ..numerics.granularity import TENSORWISE, Granularity, as_2d_shape
from ..numerics.scaling import mx_scale_from_amax, scale_from_amax
from ..numerics.tensor import Fp8Tensor
from .capabilities import DEFAULT_GEMM_GRANULARITIES, Capabilities

__all__ = ["Capabilities", "Backend", "CastTranspose", "DEFAULT_GEMM_GRANULARITIES"]


class CastTranspose(NamedTuple):
    """A tensorwise quantisation of a 2-D ``x`` together with that of ``x.T``.

    ``data`` and ``transposed`` share one scale; ``transposed.data`` is contiguous and equals
    the codes of ``x.T`` bit for bit. ``amax`` is max |x| (fp32, 0-d), the one the scale was
    computed from, or, for a given scale, measured during the cast (delayed scaling).
    """

    data: Fp8Tensor
    transposed: Fp8Tensor
    amax: torch.Tensor


class Backend:
    """Base class of backends. Subclasses set ``name``, ``priority`` and ``capabilities`` and
    implement ``cast_to_fp8``, ``cast_from_fp8`` and ``scaled_mm`` (the defaults raise
    :class:`~portable_fp8.errors.NotSupportedError`); the other primitives compose them."""

    name: str = "abstract"
    #: Higher wins when the backend is chosen by the tensors' device.
    priority: int = 0
    capabilities: Capabilities

    def unavailable_reason(self) -> str | None:
        """None when the backend can run here, else a sentence saying why it cannot."""
        return None

    def describe(self) -> dict:
        """Facts for reports: which implementation path runs, library versions."""
        return {}

    # -- primitives ------------------------------------------------------------------------

    def cast_to_fp8(
        self,
        x: torch.Tensor,
        fmt: Format,
        scale: torch.Tensor,
        granularity: Granularity,
        *,
        saturate: bool,
        rand_bits: torch.Tensor | None,
    ) -> torch.Tensor:
        """Codes of ``x * scale`` in ``fmt``'s dtype (scale in ``granularity``'s layout)."""
        raise self._missing("cast_to_fp8")

    def cast_from_fp8(
        self,
        q: torch.Tensor,
        fmt: Format,
        scale_inv: torch.Tensor,
        granularity: Granularity,
        out_dtype: torch.dtype,
    ) -> torch.Tensor:
        """``out_dtype(fp32(q) * scale_inv)`` (scale_inv in ``granularity``'s layout)."""
        raise self._missing("cast_from_fp8")

    def amax(self, x: torch.Tensor, granularity: Granularity) -> torch.Tensor:
        """max |x| per block of ``granularity`` (fp32; NaN where a block holds NaN)."""
        if granularity.is_tensorwise:
            return _amax(x)
        shape2d = as_2d_shape(x.shape)
        rows, cols = granularity.scale_shape(shape2d)
        br, bc = granularity.block(shape2d)
        x2 = x.reshape(shape2d).abs().to(torch.float32)
        padded = torch.zeros(rows * br, cols * bc, dtype=torch.float32, device=x.device)
        padded[: shape2d[0], : shape2d[1]] = x2
        blocks = padded.reshape(rows, br, cols, bc)
        return blocks.amax(dim=(1, 3))  # amax propagates NaN

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
        """Current scaling: amax per block, scale from amax, cast. Override to fuse."""
        amax = self.amax(x, granularity)
        if granularity.power_of_two:  # OCP MX: the shared-exponent rule, whatever else asked
            scale = mx_scale_from_amax(amax, fmt)
        else:
            scale = scale_from_amax(amax, fmt, margin=margin, power_of_two=power_of_two)
        data = self.cast_to_fp8(x, fmt, scale, granularity, saturate=saturate, rand_bits=rand_bits)
        return Fp8Tensor(data, scale, fmt, granularity)

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
        """Tensorwise codes of the 2-D ``x`` and of ``x.T`` (contiguous) with one scale.

        ``scale=None``: current scaling, from ``amax`` if given (fp32 0-d, ``max |x|``; its
        sign is ignored), else from this tensor's amax. Override to fuse the amax, the cast
        and the transposed store into fewer passes.
        """
        amax = self.amax(x, TENSORWISE) if amax is None else amax.abs()
        if scale is None:
            scale = scale_from_amax(amax, fmt, margin=margin, power_of_two=power_of_two)
        data = self.cast_to_fp8(x, fmt, scale, TENSORWISE, saturate=saturate, rand_bits=None)
        q = Fp8Tensor(data, scale, fmt, TENSORWISE)
        return CastTranspose(q, Fp8Tensor(data.t().contiguous(), scale, fmt, TENSORWISE), amax)

    def scaled_mm(
        self,
        a: Fp8Tensor,
        b: Fp8Tensor,
        *,
        out_dtype: torch.dtype,
        bias: torch.Tensor | None,
        c: torch.Tensor | None,
        fast_accum: bool = False,
    ) -> torch.Tensor:
        """``out_dtype((a) @ (b) + bias + c)`` of the dequantised operands (a: MxK, b: KxN).

        ``fast_accum=True``: accumulate with the declared ``capabilities.fast_accumulator``.
        The op layer passes True only where one is declared
        (:meth:`Capabilities.runs_fast_accumulator`); a backend without a fast accumulator
        accepts the keyword and ignores it, which is allowed because its ``accumulator`` is
        at least as accurate. Operands carry their reciprocals (``scale_inv``); use those
        rather than computing new ones.
        """
        raise self._missing("scaled_mm")

    def _missing(self, primitive: str) -> NotSupportedError:
        """The error for a primitive this subclass does not implement (reachable through the
        op layer when a plugin declares a capability it did not write the primitive for)."""
        return NotSupportedError(
            self.name, f"{primitive} ({type(self).__name__} does not implement this primitive)"
        )

    def __repr__(self) -> str:
        return f"<backend {self.name}>"
