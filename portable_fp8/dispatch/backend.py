"""What a backend is: its declared capabilities and the primitives it implements.

A backend receives arguments the op layer has already validated and normalised (formats as
:class:`Format`, granularities as :class:`Granularity`, scales as fp32 tensors in the
granularity's layout, on the input's device). It returns results in the contract's terms.
Subclasses override the primitives their hardware does well; the defaults compose them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from ..numerics.cast import amax as _amax
from ..numerics.formats import Format
from ..numerics.gemm import AccumulatorModel
from ..numerics.granularity import TENSORWISE, Granularity, as_2d_shape
from ..numerics.scaling import mx_scale_from_amax, scale_from_amax
from ..numerics.tensor import Fp8Tensor

__all__ = ["Capabilities", "Backend", "CastTranspose", "DEFAULT_GEMM_GRANULARITIES"]

#: The (A, B) granularity pairs of a scaled GEMM, with B as the (K, N) operand.
DEFAULT_GEMM_GRANULARITIES: frozenset[tuple[str, str]] = frozenset(
    {
        ("tensorwise", "tensorwise"),
        ("rowwise", "columnwise"),
        ("block_1x128", "block_128x128"),
        ("mx_1x32", "mx_32x1"),
    }
)

_FLOAT_OUTS = frozenset({torch.float32, torch.bfloat16, torch.float16})


@dataclass(frozen=True)
class Capabilities:
    """What a backend declares it computes conformantly (data, read by ops and the suite).

    ``accumulator`` is the GEMM accumulator the backend claims (None: exact, as the
    reference); the conformance suite judges its GEMMs with the bound that model implies.
    ``fast_accumulator`` is the narrower accumulator it may use for a GEMM asked for with
    ``fast_accum=True`` (None: it has no faster mode and runs ``accumulator`` for those too);
    the suite judges such GEMMs with that model's bound.
    ``gemm_dim_multiple`` is the multiple that K and N must be (1: any).
    ``global_scale``: the backend honours an :class:`Fp8Tensor`'s second scale level
    (``global_scale``) in dequantisation and GEMMs; the op layer refuses such tensors
    (NotSupportedError) for every other backend.
    """

    devices: frozenset[str]
    cast_formats: frozenset[str]
    gemm_formats: frozenset[tuple[str, str]]
    granularities: frozenset[str]
    gemm_granularities: frozenset[tuple[str, str]] = DEFAULT_GEMM_GRANULARITIES
    rounding: frozenset[str] = frozenset({"nearest", "stochastic"})
    non_saturating: bool = True
    out_dtypes: frozenset[torch.dtype] = _FLOAT_OUTS
    accumulator: AccumulatorModel | None = None
    fast_accumulator: AccumulatorModel | None = None
    gemm_bias: bool = True
    gemm_accumulate: bool = True
    gemm_dim_multiple: int = 1
    global_scale: bool = False
    notes: tuple[str, ...] = field(default=())

    def runs_fast_accumulator(self, fast_accum: bool) -> bool:
        """Whether a GEMM asked for with ``fast_accum`` runs ``fast_accumulator`` (and is
        passed ``fast_accum=True``): only where one is declared."""
        return fast_accum and self.fast_accumulator is not None

    def as_dict(self) -> dict:
        """A JSON-friendly description (for `portable-fp8 backends` and reports)."""
        acc, fast = self.accumulator, self.fast_accumulator
        return {
            "devices": sorted(self.devices),
            "cast_formats": sorted(self.cast_formats),
            "gemm_formats": sorted("x".join(p) for p in self.gemm_formats),
            "granularities": sorted(self.granularities),
            "gemm_granularities": sorted("x".join(p) for p in self.gemm_granularities),
            "rounding": sorted(self.rounding),
            "non_saturating": self.non_saturating,
            "out_dtypes": sorted(str(d).removeprefix("torch.") for d in self.out_dtypes),
            "accumulator": "exact" if acc is None else vars(acc),
            "fast_accumulator": None if fast is None else vars(fast),
            "gemm_bias": self.gemm_bias,
            "gemm_accumulate": self.gemm_accumulate,
            "gemm_dim_multiple": self.gemm_dim_multiple,
            "global_scale": self.global_scale,
            "notes": list(self.notes),
        }


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
    """Base class of backends. Subclasses set ``name``, ``priority`` and ``capabilities``."""

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
        raise NotImplementedError

    def cast_from_fp8(
        self,
        q: torch.Tensor,
        fmt: Format,
        scale_inv: torch.Tensor,
        granularity: Granularity,
        out_dtype: torch.dtype,
    ) -> torch.Tensor:
        """``out_dtype(fp32(q) * scale_inv)`` (scale_inv in ``granularity``'s layout)."""
        raise NotImplementedError

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
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<backend {self.name}>"
