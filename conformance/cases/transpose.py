"""quantize_transpose cases: the codes of ``x`` and of ``x.T`` with one scale, bit-exact.

For every declared element format (the op is tensorwise), input dtype and the inputs of
:mod:`.quantize` (ranges, extremes, specials, square, layouts, sizes): current scaling
(from the tensor's amax, from a given amax, power-of-two, margin) and a given scale. The
result must be whole: ``data`` with the input's shape, ``transposed`` with the transposed
shape and *contiguous*, both in the format's dtype, tensorwise, on the input's device, the
transposed codes bit for bit the codes of ``x.T``; one fp32 0-d scale shared by both, bit
for bit the reference's; ``amax`` exact (the one the scale came from).
"""

from __future__ import annotations

from functools import partial

import torch
from portable_fp8.backends.reference import ReferenceBackend

from portable_fp8.numerics.formats import Format, element_formats
from portable_fp8.numerics.granularity import TENSORWISE

from .. import data
from ..model import Case, CaseResult, Env, Verdict, not_declared
from .quantize import QUANTIZE_INPUTS, compare_quantized, fp8_tensor_problem, quantize_input

__all__ = ["transpose_cases"]

_REF = ReferenceBackend()
_RECIPES = {
    "current": {"margin": 0, "power_of_two": False},
    "current-pow2": {"margin": 0, "power_of_two": True},
    "current-margin1": {"margin": 1, "power_of_two": False},
    "given-amax": {"margin": 0, "power_of_two": False},
    "static": {"margin": 0, "power_of_two": False},
}


def _run(env: Env, fmt: Format, recipe: str, dtype: torch.dtype, inputs: str) -> CaseResult:
    x = quantize_input(env, inputs, dtype)
    g = env.generator(41)
    scale = amax = None
    if recipe == "static":
        scale = torch.pow(2.0, torch.rand((), generator=g, dtype=torch.float64) * 8 - 4).float()
    elif recipe == "given-amax":  # e.g. a delayed-scaling history: not this tensor's amax
        amax = -torch.pow(2.0, torch.rand((), generator=g, dtype=torch.float64) * 8).float()
    kw = _RECIPES[recipe]
    want = _REF.quantize_transpose(x, fmt, scale, amax, saturate=True, **kw)
    got = env.backend.quantize_transpose(
        env.to_device(x),
        fmt,
        None if scale is None else env.to_device(scale),
        None if amax is None else env.to_device(amax),
        saturate=True,
        **kw,
    )
    shape = tuple(x.shape)
    problems = [
        fp8_tensor_problem(got.data, fmt, TENSORWISE, shape, env.device, "data"),
        fp8_tensor_problem(got.transposed, fmt, TENSORWISE, shape[::-1], env.device, "transposed"),
        data.result_problem(
            got.amax, dtype=torch.float32, shape=(), device=env.device, what="amax"
        ),
    ]
    found = [p for p in problems if p]
    if not found and not got.transposed.data.is_contiguous():
        found.append(f"transposed codes not contiguous (strides {got.transposed.data.stride()})")
    if found:
        return CaseResult(Verdict.FAILED, detail="; ".join(found))
    results = [
        compare_quantized(
            x, got.data.data.cpu(), got.data.scale.cpu(), want.data.data, want.data.scale, fmt
        ),
        compare_quantized(
            x.t(),
            got.transposed.data.cpu(),
            got.transposed.scale.cpu(),
            want.transposed.data,
            want.transposed.scale,
            fmt,
        ),
    ]
    got_amax, want_amax = got.amax.cpu(), want.amax
    amax_ok = bool(got_amax == want_amax) or bool(got_amax.isnan() & want_amax.isnan())
    if all(r.verdict is Verdict.PASSED for r in results) and amax_ok:
        return CaseResult(Verdict.PASSED, 0, 0, detail=f"{2 * x.numel()} codes, scale, amax")
    parts = []
    for what, r in zip(("data", "transposed"), results, strict=True):
        if r.verdict is not Verdict.PASSED:
            parts.append(f"{what}: {r.detail}")
    if not amax_ok:
        parts.append(f"amax {float(got_amax)!r}, want {float(want_amax)!r}")
    n_bad = sum(int(r.error or 0) for r in results) + (not amax_ok)
    return CaseResult(Verdict.FAILED, n_bad, 0, detail="; ".join(parts))


def _variants(full: bool):
    dtypes = (torch.float32, torch.bfloat16, torch.float16)
    one = (torch.bfloat16,)
    yield "ranges", tuple(_RECIPES), dtypes
    yield "square", ("current", "static"), dtypes
    yield "extremes", ("current",), dtypes if full else one
    yield "specials", ("current", "static"), dtypes if full else one
    yield "transposed", ("current",), dtypes if full else one
    yield "strided", ("current",), one
    for size in ("empty", "1x1", "1x300"):
        yield size, ("current",), (torch.float32,)


def transpose_cases(env: Env) -> list[Case]:
    """Declared element formats x recipes x inputs x input dtypes of quantize_transpose."""
    caps = env.backend.capabilities
    cases = []
    for fmt in element_formats():
        reason = not_declared(caps.why_not_cast(env.device.type, fmt, granularity="tensorwise"))
        for inputs, recipes, dtypes in _variants(env.full):
            for recipe in recipes:
                for dtype in dtypes:
                    dt = str(dtype).removeprefix("torch.")
                    cases.append(
                        Case(
                            id=f"quantize_transpose/{fmt.name}/{recipe}/{dt}/{inputs}",
                            kind="quantize_transpose",
                            description=f"{QUANTIZE_INPUTS[inputs]}, {dt}; {recipe} scaling; "
                            "codes of x and of x.T (contiguous) with one scale, and amax",
                            run=partial(_run, fmt=fmt, recipe=recipe, dtype=dtype, inputs=inputs),
                            unsupported=reason,
                        )
                    )
    return cases
