"""FP8 health telemetry: per-layer, per-role statistics of the casts an FP8 Linear makes.

Contract:

* Off by default and free when off: a :class:`~portable_fp8.nn.Linear` calls its telemetry
  hook only while one is attached, and :class:`Telemetry` attaches it on sampled steps only
  (every ``every``-th call of :meth:`Telemetry.step`, starting with the first step), so an
  unsampled step runs no extra op at all.
* On a sampled step every FP8 Linear of the model reports, per role (``input`` x,
  ``weight`` W, ``grad_output`` dy -- the latter from the backward pass), one
  :class:`TensorStats`: amax, the scale used, the fractions saturated / flushed to zero /
  subnormal, the cast's relative error and SQNR, the kurtosis of the high-precision tensor,
  non-finite counts, the delayed-scaling amax history and, if asked, what-if cast errors of
  other formats and granularities. docs/telemetry.md defines each statistic.
* Everything is computed through the op API (:mod:`portable_fp8.dispatch.ops`:
  ``compute_amax``, ``dequantize``, ``cast_from_fp8``, ``quantize``) on the backend the layer
  uses, plus elementwise torch arithmetic, so every backend gives the statistics.
* Collection never changes training: the hook only reads the tensors the layer already has
  (the high-precision operand and the cast the layer made) and writes nothing the layer
  reads; losses and weights are bit-identical with telemetry on or off (tested).
* Values are kept as 0-d tensors while the step runs and turned into Python floats once, at
  :meth:`Telemetry.step` (one device synchronisation per sampled step).
* Thresholds (:class:`Thresholds`) are checked on every sampled step; each crossing emits
  a :class:`Fp8TelemetryWarning` (Python :mod:`warnings`) naming the step, layer and role,
  and is listed in the record's ``alerts``.
* Writers get each sampled step's records: :class:`JsonlWriter` (one JSON object per line
  and layer/role), :class:`TensorBoardWriter` (``torch.utils.tensorboard``; needs the
  ``tensorboard`` package, see :func:`tensorboard_available`).

Not supported: collecting inside a ``torch.compile``-d region (the hook is Python that
reads values; attach telemetry to the eager model).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import IO, Any

import torch
from torch import nn

from ..dispatch import ops
from ..errors import Fp8Error, Fp8ValueError, NotSupportedError
from ..numerics.formats import Format
from ..numerics.granularity import Granularity, as_2d_shape
from ..numerics.tensor import Fp8Tensor
from .linear import Linear
from .recipes import ROLES

__all__ = [
    "DEFAULT_WHAT_IF",
    "Fp8TelemetryWarning",
    "JsonlWriter",
    "TensorBoardWriter",
    "TensorStats",
    "Telemetry",
    "Thresholds",
    "collect",
    "enable",
    "read_jsonl",
    "tensorboard_available",
]

#: The alternatives ``what_if=True`` tries: (format, granularity) pairs, named
#: ``"format/granularity"`` in :attr:`TensorStats.what_if`.
DEFAULT_WHAT_IF: tuple[tuple[str, str], ...] = (
    ("e4m3fn", "tensorwise"),
    ("e4m3fn", "rowwise"),
    ("e4m3fn", "block_1x128"),
    ("e4m3fn", "mx_1x32"),
    ("e5m2", "tensorwise"),
    ("e5m2", "rowwise"),
    ("e5m2", "block_1x128"),
)


class Fp8TelemetryWarning(UserWarning):
    """A sampled FP8 cast crossed a :class:`Thresholds` limit (the message names the step,
    layer, role, statistic, value and limit)."""


@dataclass(frozen=True)
class Thresholds:
    """Limits that raise a :class:`Fp8TelemetryWarning` (None turns one off).

    * ``saturated``: warn if more than this fraction of the elements saturated;
    * ``underflow``: warn if more than this fraction of the nonzero elements flushed to 0;
    * ``kurtosis_growth``: warn if the kurtosis exceeds this factor times the layer/role's
      first sampled kurtosis (taken as at least 3, a Gaussian's, so a flat start such as a
      uniform init does not make ordinary growth look alarming);
    * ``nonfinite``: warn if any element is NaN or infinite.
    """

    saturated: float | None = 1e-2
    underflow: float | None = 1e-2
    kurtosis_growth: float | None = 4.0
    nonfinite: bool = True


@dataclass
class TensorStats:
    """The statistics of one cast: one layer, one role, one sampled step.

    Fractions are of ``numel`` (``saturated``) or of the nonzero finite elements
    (``underflow``, ``subnormal``); ``rel_error`` and ``sqnr_db`` compare the dequantised
    cast with the finite high-precision elements. ``scale_min`` and ``scale_max`` are equal
    for a tensorwise cast (its scale). ``amax_history`` is the layer's delayed-scaling
    history row for the role after this step's update (newest first; None for other
    recipes). ``what_if`` maps ``"format/granularity"`` to the relative error that cast would
    have had (None: not asked, or that entry not supported by the backend). ``alerts`` names
    the thresholds crossed. See docs/telemetry.md for the formulas.
    """

    step: int
    layer: str
    role: str
    format: str
    granularity: str
    numel: int
    amax: float
    scale_min: float
    scale_max: float
    saturated: float
    underflow: float
    subnormal: float
    rel_error: float
    sqnr_db: float
    kurtosis: float
    nan: int
    inf: int
    amax_history: list[float] | None = None
    what_if: dict[str, float | None] | None = None
    alerts: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict: non-finite floats become the strings ``"nan"``, ``"inf"``,
        ``"-inf"`` (strict JSON has no such numbers); :func:`read_jsonl` turns them back."""
        return _json_safe(asdict(self))

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> TensorStats:
        """The inverse of :meth:`to_json` (unknown keys are ignored)."""
        names = cls.__dataclass_fields__
        return cls(**{k: _from_json(v) for k, v in record.items() if k in names})


_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _from_json(value):
    if isinstance(value, str) and value in _NONFINITE:
        return _NONFINITE[value]
    if isinstance(value, dict):
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


# --- the statistics ---------------------------------------------------------------------


def _saturated(y: torch.Tensor, fmt: Format) -> torch.Tensor:
    """Mask of the scaled values ``y`` the cast rounds past ``fmt.max`` (clips, where
    saturating): beyond :attr:`Format.overflow_boundary`, or exactly at it when that tie
    rounds up (:attr:`Format.overflows_at_boundary`). Below it, an unbounded format would
    also have rounded to ``max``: rounding, not saturation."""
    a, bound = y.abs(), fmt.overflow_boundary
    return a >= bound if fmt.overflows_at_boundary else a > bound


def _error_terms(xz: torch.Tensor, deq: torch.Tensor, finite: torch.Tensor):
    """(sum of x^2, sum of (deq - x)^2) over the finite elements; ``xz`` is x with its
    non-finite elements zeroed (fp32 sums of squares: no cancellation, and only their ratio
    is used)."""
    err = torch.where(finite, deq - xz, 0.0)
    return (xz * xz).sum(), (err * err).sum()


def _kurtosis(xz: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
    """Pearson kurtosis E[(x - mu)^4] / E[(x - mu)^2]^2 of the finite elements (3: Gaussian),
    computed on the standardised values so no fourth power of a large value overflows."""
    n = finite.sum()
    mu = xz.sum() / n
    d = torch.where(finite, xz - mu, 0.0)
    var = (d * d).sum() / n
    z2 = (d * d) / var
    return (z2 * z2).sum() / n


def _cast_stats(x: torch.Tensor, q: Fp8Tensor, backend: str | None) -> dict[str, torch.Tensor]:
    """0-d tensors of the statistics of the cast ``q`` of the high-precision ``x``."""
    fmt, gran = q.format, q.granularity
    xf = x.to(torch.float32).reshape(as_2d_shape(x.shape))
    finite = torch.isfinite(xf)
    xz = torch.where(finite, xf, 0.0)
    deq = ops.dequantize(q, backend=backend).reshape(xf.shape)
    # The code values themselves (scale 1), for zero and subnormal codes.
    codes = ops.cast_from_fp8(q.data, 1.0, format=fmt.name, backend=backend).reshape(xf.shape)
    scale = gran.expand(q.scale.to(torch.float32), tuple(xf.shape))
    nonzero = xz != 0  # finite and nonzero
    # Fractions as fp64 quotients of exact counts (an fp32 quotient would round 1/7).
    n_nonzero = nonzero.sum().clamp(min=1).to(torch.float64)
    mag = codes.abs()
    signal, noise = _error_terms(xz, deq, finite)
    saturated = _saturated(xf * scale, fmt).sum().to(torch.float64)
    nan = (xf != xf).sum()
    return {
        "amax": ops.compute_amax(x),
        "scale_min": q.scale.amin().to(torch.float32),
        "scale_max": q.scale.amax().to(torch.float32),
        "saturated": saturated / max(xf.numel(), 1),
        "underflow": (nonzero & (mag == 0)).sum().to(torch.float64) / n_nonzero,
        "subnormal": (nonzero & (mag > 0) & (mag < fmt.min_normal)).sum() / n_nonzero,
        "rel_error": (noise / signal).sqrt(),
        "sqnr_db": 10 * torch.log10(signal / noise),
        "kurtosis": _kurtosis(xz, finite),
        "nan": nan,
        "inf": (~finite).sum() - nan,
    }


def _what_if(
    x: torch.Tensor, choices: Sequence[tuple[str, str]], backend: str | None
) -> dict[str, torch.Tensor | None]:
    """Relative error of casting ``x`` (current scaling: scales from this tensor's amax)
    to each (format, granularity); None where the backend does not declare that cast."""
    x2 = x.reshape(as_2d_shape(x.shape))
    xf = x2.to(torch.float32)
    finite = torch.isfinite(xf)
    xz = torch.where(finite, xf, 0.0)
    out: dict[str, torch.Tensor | None] = {}
    for fmt, gran in choices:
        try:
            q = ops.quantize(x2, fmt, granularity=gran, backend=backend)
        except NotSupportedError:
            out[f"{fmt}/{gran}"] = None
            continue
        deq = ops.dequantize(q, backend=backend).reshape(xf.shape)
        signal, noise = _error_terms(xz, deq, finite)
        out[f"{fmt}/{gran}"] = (noise / signal).sqrt()
    return out


# --- collection -------------------------------------------------------------------------


class _Pending:
    """What one layer's hook measured during a sampled step (0-d tensors)."""

    __slots__ = ("fmt", "gran", "numel", "values", "history", "what_if")

    def __init__(self, fmt: Format, gran: Granularity, numel: int, values, history, what_if):
        self.fmt, self.gran, self.numel = fmt, gran, numel
        self.values, self.history, self.what_if = values, history, what_if


class Telemetry:
    """Samples the FP8 casts of every :class:`~portable_fp8.nn.Linear` in ``model``.

    Call :meth:`step` once per training step (after ``optimizer.step()``, like a learning
    rate scheduler): it finishes a sampled step (records, thresholds, writers) and arms or
    disarms the layers' hooks for the next one. Steps ``0, every, 2*every, ...`` are sampled.
    ``what_if``: True for :data:`DEFAULT_WHAT_IF`, or a sequence of (format, granularity)
    pairs, or False. ``writers``: objects with ``write(records)`` and ``close()``.
    ``backend``: the backend the statistics run on (None: each layer's own).
    ``keep_history``: keep every record in :attr:`history` (False: only :attr:`last`, for
    long runs that write their records out).
    """

    def __init__(
        self,
        model: nn.Module,
        every: int = 1,
        *,
        what_if: bool | Sequence[tuple[str, str]] = False,
        thresholds: Thresholds | None = None,
        writers: Iterable[Any] = (),
        backend: str | None = None,
        keep_history: bool = True,
    ) -> None:
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise Fp8ValueError(f"every must be an int >= 1, got {every!r}")
        self.layers: dict[str, Linear] = {
            name: m for name, m in model.named_modules() if isinstance(m, Linear)
        }
        self.every = every
        self.what_if = tuple(DEFAULT_WHAT_IF if what_if is True else (what_if or ()))
        self.thresholds = thresholds if thresholds is not None else Thresholds()
        self.writers = list(writers)
        self.backend = backend
        self.keep_history = keep_history
        #: Index of the current step (the next :meth:`step` call finishes it).
        self.step_index = 0
        #: Records of the last finished sampled step, keyed by (layer, role).
        self.last: dict[tuple[str, str], TensorStats] = {}
        #: Every record so far, in order (empty unless ``keep_history``).
        self.history: list[TensorStats] = []
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._kurtosis0: dict[tuple[str, str], float] = {}
        self._closed = False
        self._arm(self._sampled(self.step_index))

    def _sampled(self, index: int) -> bool:
        return index % self.every == 0

    def _arm(self, on: bool) -> None:
        for name, layer in self.layers.items():
            layer._fp8_probe = functools.partial(self._probe, name, layer) if on else None

    def _probe(self, name: str, layer: Linear, role: str, x: torch.Tensor, q: Fp8Tensor):
        """The hook a Linear calls on a sampled step (the last call of a step wins)."""
        backend = self.backend if self.backend is not None else layer.backend
        with torch.no_grad():
            x = x.detach()
            values = _cast_stats(x, q, backend)
            hist = None
            if layer.amax_history is not None:
                hist = layer.amax_history[ROLES.index(role)].detach().clone()
            what_if = _what_if(x, self.what_if, backend) if self.what_if else None
        self._pending[(name, role)] = _Pending(
            q.format, q.granularity, x.numel(), values, hist, what_if
        )

    def step(self) -> list[TensorStats]:
        """Finish the current step; returns its records (empty if it was not sampled)."""
        records = self._finish() if self._pending else []
        self.step_index += 1
        if not self._closed:
            self._arm(self._sampled(self.step_index))
        return records

    def _finish(self) -> list[TensorStats]:
        keys = list(self._pending)
        flat: list[torch.Tensor] = []
        for key in keys:
            p = self._pending[key]
            flat += [v.reshape(()).to(torch.float64) for v in p.values.values()]
            if p.what_if:
                flat += [
                    v.reshape(()).to(torch.float64) for v in p.what_if.values() if v is not None
                ]
        numbers = iter(torch.stack(flat).cpu().tolist() if flat else [])  # one sync
        records = []
        for key in keys:
            p = self._pending[key]
            vals = {k: next(numbers) for k in p.values}
            what_if = None
            if p.what_if is not None:
                what_if = {k: (None if v is None else next(numbers)) for k, v in p.what_if.items()}
            rec = TensorStats(
                step=self.step_index,
                layer=key[0],
                role=key[1],
                format=p.fmt.name,
                granularity=p.gran.name,
                numel=p.numel,
                amax_history=None if p.history is None else p.history.cpu().tolist(),
                what_if=what_if,
                **{k: (int(v) if k in ("nan", "inf") else v) for k, v in vals.items()},
            )
            rec.alerts = self._check(rec)
            records.append(rec)
        self._pending.clear()
        self.last = {(r.layer, r.role): r for r in records}
        if self.keep_history:
            self.history += records
        for writer in self.writers:
            writer.write(records)
        return records

    def _check(self, rec: TensorStats) -> list[str]:
        """The thresholds ``rec`` crosses; warns once per crossing."""
        t = self.thresholds
        found: list[tuple[str, str]] = []
        if t.nonfinite and (rec.nan or rec.inf):
            found.append(("nonfinite", f"{rec.nan} NaN and {rec.inf} infinite elements"))
        if t.saturated is not None and rec.saturated > t.saturated:
            found.append(("saturated", f"saturated {rec.saturated:.3%} > {t.saturated:.3%}"))
        if t.underflow is not None and rec.underflow > t.underflow:
            found.append(("underflow", f"flushed to zero {rec.underflow:.3%} > {t.underflow:.3%}"))
        if math.isfinite(rec.kurtosis):
            key = (rec.layer, rec.role)
            k0 = self._kurtosis0.setdefault(key, rec.kurtosis)
            limit = None if t.kurtosis_growth is None else t.kurtosis_growth * max(k0, 3.0)
            if limit is not None and rec.kurtosis > limit:
                found.append(
                    ("kurtosis", f"kurtosis {rec.kurtosis:.3g} > {limit:.3g} "
                     f"({t.kurtosis_growth:g} x max(first {k0:.3g}, 3))")
                )  # fmt: skip
        for _, text in found:
            warnings.warn(
                f"FP8 telemetry, step {rec.step}: layer {rec.layer!r} role {rec.role!r} "
                f"({rec.format}, {rec.granularity}): {text}",
                Fp8TelemetryWarning,
                stacklevel=4,
            )
        return [name for name, _ in found]

    def close(self) -> None:
        """Finish a sampled step left open, detach every hook and close the writers."""
        if self._closed:
            return
        if self._pending:
            self._finish()
        self._arm(False)
        self._closed = True
        for writer in self.writers:
            writer.close()

    def __enter__(self) -> Telemetry:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def enable(model: nn.Module, every: int = 1, **kwargs) -> Telemetry:
    """Start sampling ``model``'s FP8 casts every ``every`` steps (see :class:`Telemetry`);
    call ``.step()`` once per training step and ``.close()`` at the end."""
    return Telemetry(model, every, **kwargs)


@contextlib.contextmanager
def collect(model: nn.Module, every: int = 1, **kwargs) -> Iterator[Telemetry]:
    """``with collect(model, every=N) as t:`` -- :func:`enable`, closed on exit."""
    t = Telemetry(model, every, **kwargs)
    try:
        yield t
    finally:
        t.close()


# --- writers ----------------------------------------------------------------------------


class JsonlWriter:
    """Appends one JSON object per record (sampled step x layer x role) to ``path``, one per
    line, as :meth:`TensorStats.to_json` makes it; flushed after every step."""

    def __init__(self, path, mode: str = "w") -> None:
        self._file: IO[str] = open(path, mode, encoding="utf-8")  # noqa: SIM115 (closed by close())

    def write(self, records: Sequence[TensorStats]) -> None:
        for rec in records:
            self._file.write(json.dumps(rec.to_json(), allow_nan=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_jsonl(path) -> list[TensorStats]:
    """The records of a file :class:`JsonlWriter` wrote (blank lines skipped)."""
    with open(path, encoding="utf-8") as f:
        return [TensorStats.from_json(json.loads(line)) for line in f if line.strip()]


def tensorboard_available() -> bool:
    """Whether ``torch.utils.tensorboard`` can be used (the ``tensorboard`` package)."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


#: The scalar statistics a :class:`TensorBoardWriter` logs.
_SCALARS = ("amax", "scale_min", "saturated", "underflow", "subnormal", "rel_error", "sqnr_db",
            "kurtosis")  # fmt: skip


class TensorBoardWriter:
    """Logs each record's scalars as ``fp8/<layer>/<role>/<statistic>`` at its step (and the
    what-if errors as ``.../what_if/<format>_<granularity>``) to a TensorBoard ``log_dir``.

    Raises :class:`~portable_fp8.errors.Fp8Error` if ``tensorboard`` is not installed.
    """

    def __init__(self, log_dir, summary_writer_factory: Callable[..., Any] | None = None) -> None:
        if summary_writer_factory is None:
            if not tensorboard_available():
                raise Fp8Error(
                    "TensorBoardWriter needs the tensorboard package (pip install tensorboard)"
                )
            from torch.utils.tensorboard import SummaryWriter

            summary_writer_factory = SummaryWriter
        self._writer = summary_writer_factory(log_dir=str(log_dir))

    def write(self, records: Sequence[TensorStats]) -> None:
        for rec in records:
            tag = f"fp8/{rec.layer}/{rec.role}"
            for name in _SCALARS:
                self._writer.add_scalar(f"{tag}/{name}", getattr(rec, name), rec.step)
            for key, err in (rec.what_if or {}).items():
                if err is not None:
                    self._writer.add_scalar(f"{tag}/what_if/{key.replace('/', '_')}", err, rec.step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
