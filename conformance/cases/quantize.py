"""Quantisation cases: per-block scales and codes bit-identical to the reference.

For every declared element format and granularity: current scaling (amax per block, then
``scale = max / amax``), the power-of-two and margin variants, and a static (given) scale
per block. Scales are compared bit for bit, codes as in the cast cases.
"""

from __future__ import annotations

from functools import partial

import torch
from portable_fp8.backends.reference import ReferenceBackend

from portable_fp8.numerics.cast import codes_of
from portable_fp8.numerics.formats import Format, element_formats
from portable_fp8.numerics.granularity import GRANULARITIES, Granularity, as_2d_shape
from portable_fp8.numerics.scaling import round_scale_to_power_of_two

from .. import data
from ..model import Case, CaseResult, Env, Verdict, not_declared

__all__ = ["quantize_cases"]

_REF = ReferenceBackend()
_RECIPES = {
    "current": {"margin": 0, "power_of_two": False},
    "current-pow2": {"margin": 0, "power_of_two": True},
    "current-margin1": {"margin": 1, "power_of_two": False},
}


def _input(env: Env, dtype: torch.dtype) -> torch.Tensor:
    """130x300 (partial blocks at both edges), row magnitudes 2^-12..2^12, a zero row."""
    g = env.generator(23)
    x = torch.randn(130, 300, generator=g) * torch.pow(2.0, torch.randint(-12, 12, (130, 1)))
    x[3] = 0.0
    return x.to(dtype)


def _static_scale(env: Env, gran: Granularity, shape) -> torch.Tensor:
    g = env.generator(29)
    s = torch.pow(2.0, torch.rand(gran.scale_shape(as_2d_shape(shape)), generator=g) * 8 - 4)
    return round_scale_to_power_of_two(s) if gran.power_of_two else s.float()


def _run_quantize(env: Env, fmt: Format, gran: Granularity, recipe: str, dtype) -> CaseResult:
    x = _input(env, dtype)
    if recipe == "static":
        s = _static_scale(env, gran, x.shape)
        want_data = _REF.cast_to_fp8(x, fmt, s, gran, saturate=True, rand_bits=None)
        got_data = env.backend.cast_to_fp8(
            env.to_device(x), fmt, env.to_device(s), gran, saturate=True, rand_bits=None
        ).cpu()
        want_scale = got_scale = s
    else:
        kw = _RECIPES[recipe]
        want = _REF.quantize_dynamic(x, fmt, gran, saturate=True, rand_bits=None, **kw)
        got = env.backend.quantize_dynamic(
            env.to_device(x), fmt, gran, saturate=True, rand_bits=None, **kw
        )
        want_data, want_scale = want.data, want.scale
        got_data, got_scale = got.data.cpu(), got.scale.cpu()
    if got_scale.shape != want_scale.shape or got_data.shape != want_data.shape:
        return CaseResult(
            Verdict.FAILED,
            detail=f"shapes: data {tuple(got_data.shape)} scale {tuple(got_scale.shape)}, want "
            f"{tuple(want_data.shape)} {tuple(want_scale.shape)}",
        )
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


def quantize_cases(env: Env) -> list[Case]:
    """Declared element formats x granularities x recipes (current, pow2, margin, static)."""
    caps = env.backend.capabilities
    dtypes = (torch.float32, torch.bfloat16) if env.full else (torch.bfloat16,)
    cases = []
    for fmt in element_formats():
        for gran in GRANULARITIES.values():
            reason = not_declared(caps.why_not_cast(env.device.type, fmt, granularity=gran))
            for recipe in (*_RECIPES, "static"):
                for dtype in dtypes:
                    dt = str(dtype).removeprefix("torch.")
                    cases.append(
                        Case(
                            id=f"quantize/{fmt.name}/{gran.name}/{recipe}/{dt}",
                            kind="quantize",
                            description=f"130x300 {dt}, row magnitudes 2^-12..2^12, one zero "
                            f"row; {recipe} scaling",
                            run=partial(
                                _run_quantize, fmt=fmt, gran=gran, recipe=recipe, dtype=dtype
                            ),
                            unsupported=reason,
                        )
                    )
    return cases
