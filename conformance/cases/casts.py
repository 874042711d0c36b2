"""Cast, dequantisation and amax cases: bit-identical to the reference emulator.

Cast inputs: every bf16 and every fp16 bit pattern, the fp32 decision points of the format
(ties, max + half an ulp, subnormal boundaries, inf, NaN, -0; see
:func:`~portable_fp8.conformance.data.fp32_edge_cases`) and a large fp32 sample, into every
declared format, saturating and (where declared) non-saturating, at scale 1, powers of two
and arbitrary scales. Any NaN code matches any NaN code (the contract's only freedom).
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial

import torch
from portable_fp8.backends.reference import ReferenceBackend

from portable_fp8.numerics.cast import codes_of
from portable_fp8.numerics.formats import FORMATS, Format
from portable_fp8.numerics.granularity import GRANULARITIES, TENSORWISE, Granularity
from portable_fp8.numerics.scaling import reciprocal

from .. import data
from ..model import Case, CaseResult, Env, Verdict

__all__ = ["cast_cases", "dequant_cases", "amax_cases"]

_REF = ReferenceBackend()
#: Scales (quantisation multipliers): 1, powers of two, and values that are not.
_SCALES_QUICK = (1.0, 2.0**-4, 3.7)
_SCALES_FULL = (1.0, 2.0**-8, 2.0**-4, 2.0**5, 2.0**12, 3.7, 0.3, 1234.5)
_RANDOM_N = {"quick": 1 << 16, "full": 1 << 21}
_SHOW = 8  # mismatches quoted in a failure's detail and reproducer


def _scale_id(s: float) -> str:
    m, e = torch.frexp(torch.tensor(s, dtype=torch.float64))
    return f"2^{int(e) - 1}" if float(m) == 0.5 else f"{s:g}"


def _cast_inputs(env: Env, name: str, fmt: Format, scale: float) -> torch.Tensor:
    if name == "bf16-all":
        return data.all_bf16()
    if name == "fp16-all":
        return data.all_fp16()
    if name == "fp32-edge":
        return data.fp32_edge_cases(fmt, scale)
    return data.fp32_random(_RANDOM_N[env.profile], env.generator(7))


_INPUT_TEXT = {
    "bf16-all": "every bf16 bit pattern (65536)",
    "fp16-all": "every fp16 bit pattern (65536)",
    "fp32-edge": "fp32 decision points of the format (ties, their neighbours, max + half "
    "ulp, subnormal boundaries, +-0, +-inf, NaN), divided by the scale",
    "fp32-random": "random fp32 bit patterns and log-uniform values over [2^-30, 2^20)",
}


def _run_cast(env: Env, fmt: Format, inputs: str, saturate: bool, scale: float) -> CaseResult:
    x = _cast_inputs(env, inputs, fmt, scale)
    s = torch.tensor(scale, dtype=torch.float32)
    want = _REF.cast_to_fp8(x, fmt, s, TENSORWISE, saturate=saturate, rand_bits=None)
    got = env.backend.cast_to_fp8(
        env.to_device(x), fmt, env.to_device(s), TENSORWISE, saturate=saturate, rand_bits=None
    )
    got = got.cpu()
    if got.shape != x.shape:
        return CaseResult(Verdict.FAILED, detail=f"result shape {tuple(got.shape)} != input's")
    bad = data.code_mismatches(got, want, fmt)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return CaseResult(Verdict.PASSED, 0, 0, detail=f"{x.numel()} elements bit-identical")
    idx = bad.nonzero().reshape(-1)[:_SHOW]
    xs = x.reshape(-1)[idx]
    g = codes_of(got).reshape(-1)[idx].tolist()
    w = codes_of(want).reshape(-1)[idx].tolist()
    lines = [
        f"x={data.fmt_float(float(v))} -> got 0x{gc:02x} want 0x{wc:02x}"
        for v, gc, wc in zip(xs.double().tolist(), g, w, strict=True)
    ]
    dtype = str(x.dtype).removeprefix("torch.")
    repro = (
        "import torch, portable_fp8 as fp8\n"
        f"x = {data.tensor_literal(xs, dtype)}\n"
        f"q = fp8.cast_to_fp8(x, {fmt.name!r}, {scale!r}, saturate={saturate}, "
        f"backend={env.backend.name!r})\n"
        f"print([hex(c) for c in q.view(torch.uint8).tolist()])"
        f"  # reference: {[hex(c) for c in w]}"
    )
    return CaseResult(
        Verdict.FAILED,
        n_bad,
        0,
        detail=f"{n_bad} of {x.numel()} codes differ; first: " + "; ".join(lines),
        reproducer=repro,
    )


def cast_cases(env: Env) -> list[Case]:
    """Every declared cast format x input set x saturate x scale."""
    caps = env.backend.capabilities
    scales = _SCALES_FULL if env.full else _SCALES_QUICK
    cases = []
    for fmt in FORMATS.values():
        declared = fmt.name in caps.cast_formats
        for saturate in (True, False):
            if not declared:
                reason = f"casts to {fmt.name} not declared"
            elif not saturate and not caps.non_saturating:
                reason = "non-saturating casts not declared"
            else:
                reason = None
            for inputs, text in _INPUT_TEXT.items():
                for scale in scales:
                    if inputs == "fp32-random" and scale not in scales[:3] and env.full:
                        continue  # the large sample at three scales is enough
                    sat = "sat" if saturate else "nosat"
                    cases.append(
                        Case(
                            id=f"cast/{fmt.name}/{inputs}/{sat}/scale={_scale_id(scale)}",
                            kind="cast",
                            description=f"{text}; scale {scale!r}; saturate={saturate}",
                            run=partial(
                                _run_cast, fmt=fmt, inputs=inputs, saturate=saturate, scale=scale
                            ),
                            unsupported=reason,
                        )
                    )
    return cases


def _run_dequant(env: Env, fmt: Format, scale: float, out_dtype: torch.dtype) -> CaseResult:
    codes = torch.arange(fmt.code_count, dtype=torch.int32).to(torch.uint8)
    q = codes if fmt.torch_dtype == torch.uint8 else codes.view(fmt.torch_dtype)
    s_inv = reciprocal(torch.tensor(scale, dtype=torch.float32))
    want = _REF.cast_from_fp8(q, fmt, s_inv, TENSORWISE, out_dtype)
    got = env.backend.cast_from_fp8(
        env.to_device(q), fmt, env.to_device(s_inv), TENSORWISE, out_dtype
    ).cpu()
    bad = data.float_mismatches(got, want)
    # Codes outside a range-limited format (Gaudi2 E4M3 above 240) never occur: not judged.
    # They are the codes that decode to NaN only because of the range limit.
    unlimited = dataclasses.replace(fmt, max=math.inf).code_values
    bad &= ~(torch.isnan(fmt.code_values) & ~torch.isnan(unlimited))
    n_bad = int(bad.sum())
    if n_bad == 0:
        return CaseResult(Verdict.PASSED, 0, 0, detail=f"{fmt.code_count} codes bit-identical")
    idx = bad.nonzero().reshape(-1)[:_SHOW].tolist()
    lines = [f"0x{i:02x} -> got {float(got[i])!r} want {float(want[i])!r}" for i in idx]
    od = str(out_dtype).removeprefix("torch.")
    repro = (
        "import torch, portable_fp8 as fp8\n"
        f"q = torch.tensor({idx}, dtype=torch.uint8)\n"
        f"print(fp8.cast_from_fp8(q, {scale!r}, format={fmt.name!r}, out_dtype=torch.{od}, "
        f"backend={env.backend.name!r}))"
    )
    return CaseResult(
        Verdict.FAILED,
        n_bad,
        0,
        detail=f"{n_bad} codes differ: " + "; ".join(lines),
        reproducer=repro,
    )


def dequant_cases(env: Env) -> list[Case]:
    """Every code of every declared format, dequantised into every float dtype."""
    caps = env.backend.capabilities
    scales = _SCALES_FULL if env.full else _SCALES_QUICK
    cases = []
    for fmt in FORMATS.values():
        reason = None if fmt.name in caps.cast_formats else f"casts from {fmt.name} not declared"
        for scale in scales:
            for out in (torch.float32, torch.bfloat16, torch.float16):
                od = str(out).removeprefix("torch.")
                cases.append(
                    Case(
                        id=f"dequant/{fmt.name}/all-codes/scale={_scale_id(scale)}/out={od}",
                        kind="dequant",
                        description=f"all {fmt.code_count} codes; scale {scale!r}; out {od}",
                        run=partial(_run_dequant, fmt=fmt, scale=scale, out_dtype=out),
                        unsupported=reason,
                    )
                )
    return cases


def _amax_input(env: Env, which: str, dtype: torch.dtype) -> torch.Tensor:
    g = env.generator(11)
    x = torch.randn(130, 300, generator=g) * torch.pow(2.0, torch.randint(-20, 20, (130, 1)))
    x[5, 7] = -3.0e4  # a negative element holds the maximum magnitude of its block
    if which == "nan":
        x[77, 201] = torch.nan
    elif which == "inf":
        x[129, 299] = -torch.inf
    elif which == "zeros":
        x[:64] = -0.0
    return x.to(dtype)


def _run_amax(env: Env, gran: Granularity, which: str, dtype: torch.dtype) -> CaseResult:
    x = _amax_input(env, which, dtype)
    want = _REF.amax(x, gran)
    got = env.backend.amax(env.to_device(x), gran).cpu()
    if got.shape != want.shape or got.dtype != want.dtype:
        return CaseResult(
            Verdict.FAILED,
            detail=f"amax has shape/dtype {tuple(got.shape)} {got.dtype}, "
            f"want {tuple(want.shape)} {want.dtype}",
        )
    # amax is exact: -0 and +0 are the same magnitude, so compare values, NaN matching NaN.
    bad = ~((got == want) | (torch.isnan(got) & torch.isnan(want)))
    n_bad = int(bad.sum())
    if n_bad == 0:
        return CaseResult(Verdict.PASSED, 0, 0, detail=f"{want.numel()} block maxima exact")
    i = bad.reshape(-1).nonzero()[0, 0]
    return CaseResult(
        Verdict.FAILED,
        n_bad,
        0,
        detail=f"{n_bad} block maxima differ; first: got {float(got.reshape(-1)[i])!r} "
        f"want {float(want.reshape(-1)[i])!r}",
    )


def amax_cases(env: Env) -> list[Case]:
    """max |x| per block of every declared granularity: exact, NaN if the block has NaN."""
    caps = env.backend.capabilities
    cases = []
    for gran in GRANULARITIES.values():
        reason = None if gran.name in caps.granularities else f"{gran.name} not declared"
        for which in ("random", "nan", "inf", "zeros"):
            for dtype in (torch.float32, torch.bfloat16):
                dt = str(dtype).removeprefix("torch.")
                cases.append(
                    Case(
                        id=f"amax/{gran.name}/{which}/{dt}",
                        kind="amax",
                        description=f"130x300 {dt}, magnitudes 2^-20..2^20, {which}",
                        run=partial(_run_amax, gran=gran, which=which, dtype=dtype),
                        unsupported=reason,
                    )
                )
    return cases
