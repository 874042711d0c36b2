"""Quantisation cases: per-block scales and codes bit-identical to the reference.

For every declared element format and granularity: current scaling (amax per block, then
``scale = max / amax``), the power-of-two and margin variants, and a static (given) scale
per block. Scales are compared bit for bit, codes as in the cast cases; the result must be
whole (codes in the format's dtype and the input's shape, fp32 scales in the granularity's
layout, both on the input's device, the format and granularity asked for).

Inputs (all from the case's own generator, see
:meth:`~portable_fp8.conformance.model.Env.generator`), in fp32, bf16 and fp16:

* ``ranges``: 130x300 (partial blocks at both edges), row magnitudes 2^-12..2^12, a zero row;
  also as a transposed view and as a strided slice (memory layouts);
* ``extremes``: rows at the input dtype's extremes (near its max, its smallest normal, its
  subnormals, and rows mixing max with subnormals, so that scaling pushes part of a block
  into the format's subnormals and below);
* ``specials``: NaN in one row, +-inf, -0 and the dtype's +-max at fixed positions;
* ``square``: 128x128, row and column magnitudes both varying (rowwise and columnwise scales
  then have the same length and only their layout tells them apart);
* sizes ``empty`` (0x300), ``1x1`` and ``1x300``.
"""

from __future__ import annotations

from functools import partial

import torch
from portable_fp8.backends.reference import ReferenceBackend

from portable_fp8.numerics.cast import codes_of
from portable_fp8.numerics.formats import Format, element_formats
from portable_fp8.numerics.granularity import GRANULARITIES, Granularity, as_2d_shape
from portable_fp8.numerics.scaling import round_scale_to_power_of_two
from portable_fp8.numerics.tensor import Fp8Tensor

from .. import data
from ..model import Case, CaseResult, Env, Verdict, not_declared

__all__ = ["quantize_cases", "quantize_input", "QUANTIZE_INPUTS"]

_REF = ReferenceBackend()
_RECIPES = {
    "current": {"margin": 0, "power_of_two": False},
    "current-pow2": {"margin": 0, "power_of_two": True},
    "current-margin1": {"margin": 1, "power_of_two": False},
}
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

#: Input name -> description (see the module docstring).
QUANTIZE_INPUTS = {
    "ranges": "130x300, row magnitudes 2^-12..2^12, one zero row",
    "transposed": "130x300 ranges data passed as a transposed view",
    "strided": "130x300 ranges data passed as every other column of a wider buffer",
    "extremes": "130x300, rows at the dtype's max, smallest normal, subnormals and mixes",
    "specials": "130x300 normal values with NaN in row 7, +-inf, -0 row, +-dtype max",
    "square": "128x128, row magnitudes 2^-6..2^6 times column magnitudes 2^-3..2^3",
    "empty": "0x300",
    "1x1": "1x1",
    "1x300": "1x300 normal values",
}


def _ranges(g: torch.Generator, rows: int = 130, cols: int = 300) -> torch.Tensor:
    mags = torch.pow(2.0, torch.randint(-12, 12, (rows, 1), generator=g).double()).float()
    x = torch.randn(rows, cols, generator=g) * mags
    x[min(3, rows - 1)] = 0.0
    return x


def _extremes(g: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    fi = torch.finfo(dtype)
    x = torch.randn(130, 300, generator=g).to(torch.float64)
    u = torch.rand(130, 300, generator=g, dtype=torch.float64) + 0.5  # [0.5, 1.5)
    sub = fi.smallest_normal * fi.eps  # the dtype's smallest subnormal
    x[0] = fi.max * (u[0] / 1.5)  # near the dtype's max
    x[1] = -fi.smallest_normal * u[1]  # around the smallest normal
    x[2] = sub * torch.randint(1, 64, (300,), generator=g).double()  # dtype subnormals
    x[4, ::2] = fi.max / 2
    x[4, 1::2] = sub * 3  # max and subnormals in one block: the small ones underflow
    x[5] = fi.max * u[5] / 1.5 * torch.where(torch.arange(300) % 3 == 0, 1.0, 2.0**-40)
    return x.clamp(-fi.max, fi.max).to(torch.float32).to(dtype)


def _specials(g: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    fi = torch.finfo(dtype)
    x = torch.randn(130, 300, generator=g).to(dtype)
    x[7, 13] = torch.nan  # one NaN: row 7's blocks (and tensorwise: all) become NaN
    x[9, 50] = torch.inf
    x[11, 200] = -torch.inf
    x[13] = -0.0
    x[15, 3] = fi.max
    x[15, 4] = -fi.max
    x[129, 299] = torch.nan  # the last element, in partial blocks of every layout
    return x


def _square(g: torch.Generator) -> torch.Tensor:
    rows = torch.pow(2.0, (torch.arange(128) % 13 - 6).double()).float().reshape(-1, 1)
    cols = torch.pow(2.0, (torch.arange(128) % 7 - 3).double()).float().reshape(1, -1)
    return torch.randn(128, 128, generator=g) * rows * cols


def quantize_input(env: Env, name: str, dtype: torch.dtype) -> torch.Tensor:
    """The input ``name`` of :data:`QUANTIZE_INPUTS` in ``dtype`` (in its memory layout)."""
    g = env.generator(23)
    if name in ("ranges", "transposed", "strided"):
        return data.strided_view(_ranges(g).to(dtype), name if name != "ranges" else "contiguous")
    if name == "extremes":
        return _extremes(g, dtype)
    if name == "specials":
        return _specials(g, dtype)
    if name == "square":
        return _square(g).to(dtype)
    if name == "empty":
        return torch.zeros(0, 300, dtype=dtype)
    if name == "1x1":
        return torch.tensor([[-3.25]], dtype=dtype)
    return _ranges(g, 1, 300).to(dtype) + 1  # 1x300 (its zero row replaced by ones)


def _static_scale(env: Env, gran: Granularity, shape) -> torch.Tensor:
    g = env.generator(29)
    s = torch.pow(2.0, torch.rand(gran.scale_shape(as_2d_shape(shape)), generator=g) * 8 - 4)
    return round_scale_to_power_of_two(s) if gran.power_of_two else s.float()


def fp8_tensor_problem(
    got: Fp8Tensor, fmt: Format, gran: Granularity, shape, device: torch.device, what: str
) -> str | None:
    """Why ``got`` is not a whole quantised result of ``shape`` (see the module docstring)."""
    if not isinstance(got, Fp8Tensor):
        return f"{what}: returned {type(got).__name__}, want Fp8Tensor"
    problems = [
        data.result_problem(
            got.data, dtype=fmt.torch_dtype, shape=tuple(shape), device=device, what="codes"
        ),
        data.result_problem(
            got.scale,
            dtype=torch.float32,
            shape=tuple(gran.scale_shape(as_2d_shape(shape))),
            device=device,
            what="scale",
        ),
    ]
    if got.format != fmt:
        problems.append(f"format {got.format.name}, want {fmt.name}")
    if got.granularity != gran:
        problems.append(f"granularity {got.granularity.name}, want {gran.name}")
    found = [p for p in problems if p]
    return f"{what}: " + "; ".join(found) if found else None


def compare_quantized(
    x: torch.Tensor,
    got_data: torch.Tensor,
    got_scale: torch.Tensor,
    want_data: torch.Tensor,
    want_scale: torch.Tensor,
    fmt: Format,
) -> CaseResult:
    """Scales bit for bit and codes (any NaN code matching any NaN code) against the reference."""
    bad_scale = data.float_mismatches(got_scale.float(), want_scale.float())
    bad_codes = data.code_mismatches(got_data, want_data, fmt)
    n_bad = int(bad_scale.sum()) + int(bad_codes.sum())
    if n_bad == 0:
        return CaseResult(Verdict.PASSED, 0, 0, detail=f"{want_scale.numel()} scales and codes")
    parts = []
    if bad_scale.any():
        i = int(bad_scale.nonzero()[0, 0])
        parts.append(
            f"{int(bad_scale.sum())} scales differ (first: block {i}: got "
            f"{float(got_scale.reshape(-1)[i])!r} want {float(want_scale.reshape(-1)[i])!r})"
        )
    if bad_codes.any():
        i = int(bad_codes.nonzero()[0, 0])
        parts.append(
            f"{int(bad_codes.sum())} codes differ (first: element {i}, x="
            f"{float(x.reshape(-1)[i])!r}: got 0x{int(codes_of(got_data).reshape(-1)[i]):02x} "
            f"want 0x{int(codes_of(want_data).reshape(-1)[i]):02x})"
        )
    return CaseResult(Verdict.FAILED, n_bad, 0, detail="; ".join(parts))


def _run_quantize(
    env: Env, fmt: Format, gran: Granularity, recipe: str, dtype, inputs: str = "ranges"
) -> CaseResult:
    x = quantize_input(env, inputs, dtype)
    if recipe == "static":
        s = _static_scale(env, gran, x.shape)
        want_data = _REF.cast_to_fp8(x, fmt, s, gran, saturate=True, rand_bits=None)
        got_data = env.backend.cast_to_fp8(
            env.to_device(x), fmt, env.to_device(s), gran, saturate=True, rand_bits=None
        )
        problem = data.result_problem(
            got_data, dtype=fmt.torch_dtype, shape=tuple(x.shape), device=env.device
        )
        want_scale = got_scale = s
    else:
        kw = _RECIPES[recipe]
        want = _REF.quantize_dynamic(x, fmt, gran, saturate=True, rand_bits=None, **kw)
        got = env.backend.quantize_dynamic(
            env.to_device(x), fmt, gran, saturate=True, rand_bits=None, **kw
        )
        problem = fp8_tensor_problem(got, fmt, gran, x.shape, env.device, "quantize_dynamic")
        if problem is None:
            got_data, got_scale = got.data, got.scale.cpu()
        want_data, want_scale = want.data, want.scale
    if problem:
        return CaseResult(Verdict.FAILED, detail=problem)
    return compare_quantized(x, got_data.cpu(), got_scale, want_data, want_scale, fmt)


def _variants(full: bool):
    """(inputs, recipes, dtypes) groups of the case list."""
    every = (*_RECIPES, "static")
    one = (torch.bfloat16,)
    yield "ranges", every, _DTYPES
    yield "extremes", ("current", "static"), _DTYPES
    yield "specials", ("current", "static"), _DTYPES
    yield "square", ("current", "static"), _DTYPES if full else one
    yield "transposed", ("current",), _DTYPES if full else one
    yield "strided", ("current",), _DTYPES if full else one
    for size in ("empty", "1x1", "1x300"):
        yield size, ("current",), (torch.float32,)


def quantize_cases(env: Env) -> list[Case]:
    """Declared element formats x granularities x recipes x inputs x input dtypes."""
    caps = env.backend.capabilities
    cases = []
    for fmt in element_formats():
        for gran in GRANULARITIES.values():
            reason = not_declared(caps.why_not_cast(env.device.type, fmt, granularity=gran))
            for inputs, recipes, dtypes in _variants(env.full):
                for recipe in recipes:
                    for dtype in dtypes:
                        dt = str(dtype).removeprefix("torch.")
                        suffix = "" if inputs == "ranges" else f"/{inputs}"
                        cases.append(
                            Case(
                                id=f"quantize/{fmt.name}/{gran.name}/{recipe}/{dt}{suffix}",
                                kind="quantize",
                                description=f"{QUANTIZE_INPUTS[inputs]}, {dt}; {recipe} scaling",
                                run=partial(
                                    _run_quantize,
                                    fmt=fmt,
                                    gran=gran,
                                    recipe=recipe,
                                    dtype=dtype,
                                    inputs=inputs,
                                ),
                                unsupported=reason,
                            )
                        )
    return cases
