"""Inputs the cases feed to a backend, generated on the CPU, and bit-level comparisons.

Every generator is deterministic (seeded from the run's seed) so that a case id names the
same inputs on every machine. Values are described in the case's ``description``.
"""

from __future__ import annotations

import torch

from portable_fp8.errors import Fp8ValueError
from portable_fp8.numerics.cast import codes_of
from portable_fp8.numerics.formats import Format

__all__ = [
    "all_bf16",
    "all_fp16",
    "fp32_edge_cases",
    "fp32_random",
    "code_mismatches",
    "float_mismatches",
    "fmt_float",
    "tensor_literal",
    "result_problem",
    "like_bf16_fp16_edges",
    "strided_view",
]


def all_bf16() -> torch.Tensor:
    """Every one of the 65536 bf16 bit patterns (NaNs, infinities, subnormals, -0 included)."""
    return torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)


def all_fp16() -> torch.Tensor:
    """Every one of the 65536 fp16 bit patterns."""
    return torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.float16)


def _next_up(x: torch.Tensor) -> torch.Tensor:
    return torch.nextafter(x, torch.full_like(x, torch.inf))


def _next_down(x: torch.Tensor) -> torch.Tensor:
    return torch.nextafter(x, torch.full_like(x, -torch.inf))


def fp32_edge_cases(fmt: Format, scale: float) -> torch.Tensor:
    """fp32 inputs that, multiplied by ``scale``, land on ``fmt``'s decision points.

    For every pair of neighbouring finite values of ``fmt`` (and past ``max``, where the next
    step of the unbounded exponent range would be): the exact midpoint (a tie), the fp32
    values one ulp either side of it, and the values themselves with their fp32 neighbours;
    then ``max`` plus half an ulp, the subnormal boundaries, zeros of both signs, infinities,
    NaN and fp32's own extremes. All in both signs. Divided by ``scale`` in float64 and
    rounded to fp32 once, so ``fp32(x) * scale`` lands on or next to the decision point
    (exactly on it when ``scale`` is a power of two).
    """
    values = fmt.code_values
    finite = values[torch.isfinite(values) & (values >= 0)].unique().sort().values
    # One more step above max (where the format would continue without its range limit).
    step = finite[-1] - finite[-2]
    finite = torch.cat([finite, finite[-1:] + step])
    mids = (finite[:-1] + finite[1:]) / 2  # exact in float64 (and in fp32, see below)
    points = torch.cat([finite, mids]) / scale
    p32 = points.to(torch.float32)
    extremes = torch.tensor(
        [
            0.0,
            torch.inf,
            torch.nan,
            torch.finfo(torch.float32).max,
            torch.finfo(torch.float32).tiny,
            torch.finfo(torch.float32).smallest_normal * torch.finfo(torch.float32).eps,
            fmt.min_subnormal / 2 / scale,
            fmt.min_subnormal / 4 / scale,
            fmt.min_normal / scale,
        ],
        dtype=torch.float32,
    )
    pos = torch.cat([p32, _next_up(p32), _next_down(p32), extremes, _next_up(extremes[6:])])
    pos = pos[~(pos < 0)]
    return torch.cat([pos, -pos])


def fp32_random(n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` fp32 values: half uniformly random bit patterns (every class of value, NaN
    payloads included), half log-uniform magnitudes over [2**-30, 2**20) with random signs."""
    half = n // 2
    bits = torch.randint(-(2**31), 2**31, (half,), dtype=torch.int64, generator=generator)
    raw = bits.to(torch.int32).view(torch.float32)
    exps = torch.rand(n - half, generator=generator, dtype=torch.float64) * 50 - 30
    signs = torch.randint(0, 2, (n - half,), generator=generator) * 2 - 1
    logu = (signs * torch.pow(2.0, exps)).to(torch.float32)
    return torch.cat([raw, logu])


def code_mismatches(got: torch.Tensor, want: torch.Tensor, fmt: Format) -> torch.Tensor:
    """Boolean mask of elements whose codes differ, where any NaN code matches any NaN code."""
    g = codes_of(got.cpu()).to(torch.int64).reshape(-1)
    w = codes_of(want.cpu()).to(torch.int64).reshape(-1)
    nan = torch.isnan(fmt.code_values)
    return (g != w) & ~(nan[g] & nan[w])


def float_mismatches(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """Elements whose bits differ, where NaN matches NaN (any payload); -0 and +0 differ."""
    g = got.cpu().reshape(-1)
    w = want.cpu().reshape(-1)
    if g.dtype != w.dtype:
        return torch.ones(g.shape, dtype=torch.bool)
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[g.element_size()]
    same = g.view(ints) == w.view(ints)
    return ~(same | (torch.isnan(g) & torch.isnan(w)))


def fmt_float(v: float) -> str:
    """A float as a Python literal that round-trips exactly (repr, or inf/nan spelled out)."""
    if v != v:
        return "float('nan')"
    if v in (float("inf"), float("-inf")):
        return "float('inf')" if v > 0 else "-float('inf')"
    return repr(float(v))


def tensor_literal(x: torch.Tensor, dtype: str) -> str:
    """``torch.tensor([...], dtype=torch.<dtype>)`` reproducing ``x`` exactly."""
    vals = ", ".join(fmt_float(v) for v in x.reshape(-1).double().tolist())
    return f"torch.tensor([{vals}], dtype=torch.{dtype})"


def result_problem(
    got: torch.Tensor,
    *,
    dtype: torch.dtype,
    shape: tuple[int, ...],
    device: torch.device,
    what: str = "result",
) -> str | None:
    """Why ``got`` is not a whole, well-formed result (dtype, shape, device), or None.

    Every case checks this before comparing values: a wrong dtype or a result left on
    another device is a failure even when the values would compare equal.
    """
    problems = []
    if got.dtype != dtype:
        problems.append(f"dtype {got.dtype}, want {dtype}")
    if tuple(got.shape) != tuple(shape):
        problems.append(f"shape {tuple(got.shape)}, want {tuple(shape)}")
    if got.device.type != device.type:
        problems.append(f"device {got.device}, want {device}")
    return f"{what}: " + "; ".join(problems) if problems else None


def like_bf16_fp16_edges(x32: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """fp32 decision points carried into ``dtype``: each point rounded to ``dtype`` and that
    value's two ``dtype`` neighbours, so the decision point is bracketed at ``dtype``'s own
    resolution (a bf16/fp16 input can only come that close to it)."""
    if dtype == torch.float32:
        return x32
    y = x32.to(dtype)
    up = torch.nextafter(y, torch.full_like(y, torch.inf))
    down = torch.nextafter(y, torch.full_like(y, -torch.inf))
    return torch.cat([y, up, down])


def strided_view(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The 2-D ``x`` in another memory layout with the same values: ``"contiguous"``,
    ``"transposed"`` (a ``.t()`` view of a contiguous ``x.T``) or ``"strided"`` (every other
    column of a twice-as-wide buffer whose other columns are NaN)."""
    if layout == "contiguous":
        return x.contiguous()
    if layout == "transposed":
        return x.t().contiguous().t()
    if layout == "strided":
        wide = torch.full((x.shape[0], 2 * x.shape[1]), torch.nan, dtype=x.dtype)
        wide[:, ::2] = x
        return wide[:, ::2]
    raise Fp8ValueError(f"layout must be contiguous, transposed or strided, got {layout!r}")
