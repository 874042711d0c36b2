"""What a backend declares it computes conformantly, and the one answer to "can it run this?".

:class:`Capabilities` is data (sets of format names, granularity names, ...). Its
``why_not_*`` methods are the only predicates over that data: the op layer, ``nn.convert``
and the conformance suite all ask them. Each returns None when the operation is declared,
else a short reason naming the missing feature (``"casts to e5m2fnuz"``), the text that
:class:`~portable_fp8.errors.NotSupportedError` puts after "does not support".

Answers are remembered on the object itself (a dict that is not part of its value: it is
excluded from ``==``, ``hash`` and ``repr``, and ``dataclasses.replace`` gives the copy an
empty one), so a backend whose ``capabilities`` is replaced gets fresh answers at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..numerics.formats import Format
from ..numerics.gemm import AccumulatorModel
from ..numerics.granularity import Granularity

__all__ = ["Capabilities", "DEFAULT_GEMM_GRANULARITIES"]

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

#: Entries an answer cache holds before it is emptied (the keys are combinations of declared
#: names, so real programs stay far below this; the bound only guards odd callers).
_ANSWERS_MAX = 4096

_MISS = object()


def _name(x: str | Format | Granularity) -> str:
    """A format's or granularity's name (a str is taken as the name)."""
    return x if x.__class__ is str else x.name  # type: ignore[union-attr,return-value]


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
    (``global_scale``) in GEMMs; the op layer refuses such operands (NotSupportedError) for
    every other backend.
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
    #: Remembered answers of the why_not_* methods (not part of the value).
    _answers: dict[tuple, str | None] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    # -- the capability question -----------------------------------------------------------

    def _remember(self, key: tuple, answer: str | None) -> str | None:
        if len(self._answers) >= _ANSWERS_MAX:
            self._answers.clear()
        self._answers[key] = answer
        return answer

    def why_not_device(self, device: str | None) -> str | None:
        """Why the backend does not run on tensors of ``device`` (a device type; None: any
        declared device is meant, so nothing is missing)."""
        if device is not None and device not in self.devices:
            return f"tensors on device {device!r}"
        return None

    def why_not_cast(
        self,
        device: str | None,
        fmt: str | Format,
        *,
        saturate: bool = True,
        rounding: str = "nearest",
        granularity: str | Granularity | None = None,
    ) -> str | None:
        """Why a cast to ``fmt`` on ``device`` is not declared (None: it is).

        ``granularity`` (None: tensorwise casts, which every backend has) is the scaling of a
        quantisation. ``device=None`` asks about the backend's declared devices, whichever.
        """
        gran_name = None if granularity is None else _name(granularity)
        key = ("cast", device, _name(fmt), bool(saturate), rounding, gran_name)
        hit = self._answers.get(key, _MISS)
        if hit is not _MISS:
            return hit  # type: ignore[return-value]
        _, _, f, sat, _, gran = key
        reason = self.why_not_device(device)
        if reason is None and f not in self.cast_formats:
            reason = f"casts to {f}"
        if reason is None and not sat and not self.non_saturating:
            reason = "non-saturating casts"
        if reason is None and rounding not in self.rounding:
            reason = f"{rounding} rounding"
        if reason is None and gran is not None:
            reason = self.why_not_scaling(None, gran)
        return self._remember(key, reason)

    def why_not_decode(self, device: str | None, fmt: str | Format) -> str | None:
        """Why dequantising ``fmt`` codes on ``device`` is not declared (None: it is)."""
        key = ("decode", device, _name(fmt))
        hit = self._answers.get(key, _MISS)
        if hit is not _MISS:
            return hit  # type: ignore[return-value]
        reason = self.why_not_device(device)
        if reason is None and key[2] not in self.cast_formats:
            reason = f"casts from {key[2]}"
        return self._remember(key, reason)

    def why_not_scaling(self, device: str | None, granularity: str | Granularity) -> str | None:
        """Why per-block scales (amax, quantisation) of ``granularity`` are not declared."""
        key = ("scaling", device, _name(granularity))
        hit = self._answers.get(key, _MISS)
        if hit is not _MISS:
            return hit  # type: ignore[return-value]
        reason = self.why_not_device(device)
        if reason is None and key[2] not in self.granularities:
            reason = f"{key[2]} scaling"
        return self._remember(key, reason)

    def why_not_gemm(
        self,
        device: str | None,
        a_fmt: str | Format,
        b_fmt: str | Format,
        a_gran: str | Granularity,
        b_gran: str | Granularity,
        out_dtype: torch.dtype | None,
        *,
        bias: bool = False,
        c: bool = False,
        k: int | None = None,
        n: int | None = None,
    ) -> str | None:
        """Why a scaled GEMM (A: ``a_fmt``/``a_gran``, B: ``b_fmt``/``b_gran``, into
        ``out_dtype``, with a bias and/or accumulation into C) is not declared (None: it is).
        ``out_dtype=None`` leaves the output dtype unasked (decided later, e.g. by the input).

        With ``k`` and ``n`` (either may be None: not asked) it also applies
        :meth:`why_not_gemm_dims`.
        """
        key = (  # names inlined: this runs on every scaled_mm
            "gemm",
            device,
            a_fmt if a_fmt.__class__ is str else a_fmt.name,  # type: ignore[union-attr]
            b_fmt if b_fmt.__class__ is str else b_fmt.name,  # type: ignore[union-attr]
            a_gran if a_gran.__class__ is str else a_gran.name,  # type: ignore[union-attr]
            b_gran if b_gran.__class__ is str else b_gran.name,  # type: ignore[union-attr]
            out_dtype,
            bool(bias),
            bool(c),
        )
        reason = self._answers.get(key, _MISS)
        if reason is _MISS:
            reason = self._remember(key, self._gemm_reason(*key[1:]))
        if reason is None and (k is not None or n is not None):
            return self.why_not_gemm_dims(k, n)
        return reason  # type: ignore[return-value]

    def _gemm_reason(
        self,
        device: str | None,
        fa: str,
        fb: str,
        ga: str,
        gb: str,
        out_dtype: torch.dtype | None,
        bias: bool,
        c: bool,
    ) -> str | None:
        reason = self.why_not_device(device)
        if reason is not None:
            return reason
        if (fa, fb) not in self.gemm_formats:
            return f"GEMMs of {fa} x {fb}"
        if (ga, gb) not in self.gemm_granularities:
            return f"GEMMs with {ga} x {gb} scaling"
        if out_dtype is not None and out_dtype not in self.out_dtypes:
            return f"GEMM output {out_dtype}"
        if bias and not self.gemm_bias:
            return "GEMM bias"
        if c and not self.gemm_accumulate:
            return "GEMM accumulation into c"
        return None

    def why_not_global_scale(self) -> str | None:
        """Why operands with a second (per-tensor) scale level cannot be used (None: they
        can)."""
        return None if self.global_scale else "two-level (global) scales"

    def why_not_gemm_dims(self, k: int | None, n: int | None) -> str | None:
        """Why a GEMM with inner dimension ``k`` and ``n`` output columns cannot run: they
        must be multiples of ``gemm_dim_multiple`` (None: they are; a None dimension is not
        checked). The op layer raises this as Fp8ValueError: it is about the shapes."""
        mult = self.gemm_dim_multiple
        if mult > 1 and ((k is not None and k % mult) or (n is not None and n % mult)):
            return f"K and N to be multiples of {mult}; got K={k}, N={n}"
        return None

    def runs_fast_accumulator(self, fast_accum: bool) -> bool:
        """Whether a GEMM asked for with ``fast_accum`` runs ``fast_accumulator`` (and is
        passed ``fast_accum=True``): only where one is declared."""
        return fast_accum and self.fast_accumulator is not None

    # -- reporting -------------------------------------------------------------------------

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
