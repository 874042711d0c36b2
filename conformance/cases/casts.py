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
from portable_fp8.numerics.granularity import (
    GRANULARITIES,
    TENSORWISE,
    Granularity,
    as_2d_shape,
)
from portable_fp8.numerics.scaling import reciprocal

from .. import data
from ..model import Case, CaseResult, Env, Verdict, not_declared

__all__ = ["cast_cases", "dequant_cases", "dequant_block_cases", "amax_cases"]

_REF = ReferenceBackend()
#: Scales (quantisation multipliers): 1, powers of two, and values that are not. With every
#: bf16/fp16 pattern, the decision points and the random sample, 2^-16 brings the inputs'
#: large values (fp16 max, bf16 up to 2^127) to the format's max and past it (overflow),
#: 2^16 brings small ones (fp16 and bf16 subnormals, fp32 tiny values) into the format's
#: subnormals; together with 1 every range of the format meets every input dtype.
_SCALES_QUICK = (1.0, 2.0**-4, 3.7, 2.0**-16, 2.0**16)
_SCALES_FULL = (1.0, 2.0**-8, 2.0**-4, 2.0**5, 2.0**12, 3.7, 0.3, 1234.5, 2.0**-16, 2.0**16)
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
    if name in ("bf16-edge", "fp16-edge"):
        dtype = torch.bfloat16 if name == "bf16-edge" else torch.float16
        return data.like_bf16_fp16_edges(data.fp32_edge_cases(fmt, scale), dtype)
    if name == "empty":
        return torch.zeros(0, 7)
    x = data.fp32_random(_RANDOM_N[env.profile], env.generator(7))
    if name in ("fp32-transposed", "bf16-strided"):
        x2 = x[: 256 * 128].reshape(256, 128)
        if name == "fp32-transposed":
            return data.strided_view(x2, "transposed")
        return data.strided_view(x2.to(torch.bfloat16), "strided")
    return x


_INPUT_TEXT = {
    "bf16-all": "every bf16 bit pattern (65536)",
    "fp16-all": "every fp16 bit pattern (65536)",
    "fp32-edge": "fp32 decision points of the format (ties, their neighbours, max + half "
    "ulp, subnormal boundaries, +-0, +-inf, NaN), divided by the scale",
    "fp32-random": "random fp32 bit patterns and log-uniform values over [2^-30, 2^20)",
    "bf16-edge": "the fp32 decision points rounded to bf16, with their bf16 neighbours",
    "fp16-edge": "the fp32 decision points rounded to fp16, with their fp16 neighbours",
    "fp32-transposed": "256x128 random fp32 values passed as a transposed view",
    "bf16-strided": "256x128 random values in bf16 passed as every other column of a buffer",
    "empty": "an empty 0x7 fp32 tensor",
}
#: Input sets run at every scale (the others at scale 1 and one more, see cast_cases).
_EVERY_SCALE = ("bf16-all", "fp16-all", "fp32-edge", "bf16-edge", "fp16-edge")


def _run_cast(env: Env, fmt: Format, inputs: str, saturate: bool, scale: float) -> CaseResult:
    x = _cast_inputs(env, inputs, fmt, scale)
    s = torch.tensor(scale, dtype=torch.float32)
    want = _REF.cast_to_fp8(x, fmt, s, TENSORWISE, saturate=saturate, rand_bits=None)
    got = env.backend.cast_to_fp8(
        env.to_device(x), fmt, env.to_device(s), TENSORWISE, saturate=saturate, rand_bits=None
    )
    problem = data.result_problem(
        got, dtype=fmt.torch_dtype, shape=tuple(x.shape), device=env.device
    )
    if problem:
        return CaseResult(Verdict.FAILED, detail=problem)
    got = got.cpu()
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
        for saturate in (True, False):
            reason = not_declared(caps.why_not_cast(env.device.type, fmt, saturate=saturate))
            for inputs, text in _INPUT_TEXT.items():
                for scale in scales:
                    if inputs == "fp32-random" and scale not in scales[:3] and env.full:
                        continue  # the large sample at three scales is enough
                    if (
                        inputs not in _EVERY_SCALE
                        and inputs != "fp32-random"
                        and (scale not in scales[:2])
                    ):
                        continue  # layouts and sizes: scale 1 and one power of two
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


def _judged(bad: torch.Tensor, fmt: Format, q: torch.Tensor) -> torch.Tensor:
    """``bad`` without the codes outside a range-limited format (Gaudi2 E4M3 above 240):
    they never occur, so are not judged. They are the codes that decode to NaN only because
    of the range limit."""
    unlimited = dataclasses.replace(fmt, max=math.inf).code_values
    unjudged = torch.isnan(fmt.code_values) & ~torch.isnan(unlimited)
    return bad & ~unjudged[codes_of(q.cpu()).to(torch.int64).reshape(-1)]


def _run_dequant(env: Env, fmt: Format, scale: float, out_dtype: torch.dtype) -> CaseResult:
    codes = torch.arange(fmt.code_count, dtype=torch.int32).to(torch.uint8)
    q = codes if fmt.torch_dtype == torch.uint8 else codes.view(fmt.torch_dtype)
    s_inv = reciprocal(torch.tensor(scale, dtype=torch.float32))
    want = _REF.cast_from_fp8(q, fmt, s_inv, TENSORWISE, out_dtype)
    got = env.backend.cast_from_fp8(
        env.to_device(q), fmt, env.to_device(s_inv), TENSORWISE, out_dtype
    )
    problem = data.result_problem(got, dtype=out_dtype, shape=tuple(q.shape), device=env.device)
    if problem:
        return CaseResult(Verdict.FAILED, detail=problem)
    got = got.cpu()
    bad = _judged(data.float_mismatches(got, want), fmt, q)
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
        reason = not_declared(caps.why_not_decode(env.device.type, fmt))
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


def _run_dequant_blocks(
    env: Env, fmt: Format, gran: Granularity, out_dtype: torch.dtype, shape, layout: str
) -> CaseResult:
    """Every code, shuffled into ``shape``, each block with its own 1/scale."""
    g = env.generator(13)
    n = shape[0] * shape[1]
    codes = torch.randperm(max(n, 256), generator=g)[:n].remainder(256).to(torch.uint8)
    codes = codes.reshape(shape)
    sshape = gran.scale_shape(as_2d_shape(shape))
    if gran.power_of_two:
        s_inv = torch.pow(2.0, torch.randint(-8, 9, sshape, generator=g).double()).float()
    else:  # arbitrary fp32 factors 2^-8..2^8, so a mixed-up block shows in every bit
        s_inv = torch.pow(2.0, torch.rand(sshape, generator=g, dtype=torch.float64) * 16 - 8)
        s_inv = s_inv.float()
    q = codes if fmt.torch_dtype == torch.uint8 else codes.view(fmt.torch_dtype)
    block_gran = gran
    if layout == "transposed":  # the codes of q.T, passed as a view: scales follow q's layout
        q = data.strided_view(q.view(torch.uint8), "transposed")
        q = q if fmt.torch_dtype == torch.uint8 else q.view(fmt.torch_dtype)
    want = _REF.cast_from_fp8(q, fmt, s_inv, block_gran, out_dtype)
    got = env.backend.cast_from_fp8(
        env.to_device(q), fmt, env.to_device(s_inv), block_gran, out_dtype
    )
    problem = data.result_problem(got, dtype=out_dtype, shape=tuple(shape), device=env.device)
    if problem:
        return CaseResult(Verdict.FAILED, detail=problem)
    got = got.cpu()
    bad = _judged(data.float_mismatches(got, want), fmt, q)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return CaseResult(Verdict.PASSED, 0, 0, detail=f"{n} elements bit-identical")
    i = int(bad.nonzero()[0, 0])
    r, c = divmod(i, shape[1])
    return CaseResult(
        Verdict.FAILED,
        n_bad,
        0,
        detail=f"{n_bad} of {n} values differ; first at [{r}, {c}] (code "
        f"0x{int(codes_of(q.cpu())[r, c]):02x}): got {float(got[r, c])!r} "
        f"want {float(want[r, c])!r}",
    )


def dequant_block_cases(env: Env) -> list[Case]:
    """Dequantisation with per-block factors: every declared format x granularity x output
    dtype, on a 130x300 tensor (partial blocks), a square 128x128 one (rowwise and
    columnwise factors of equal length), and a transposed view."""
    caps = env.backend.capabilities
    cases = []
    for fmt in FORMATS.values():
        if fmt.is_scale_format:
            continue
        for gran in GRANULARITIES.values():
            device = env.device.type
            reason = not_declared(
                caps.why_not_decode(device, fmt) or caps.why_not_scaling(device, gran)
            )
            for shape, layout in (
                ((130, 300), "contiguous"),
                ((128, 128), "contiguous"),
                (
                    (128, 128),
                    "transposed",
                ),
            ):
                for out in (torch.float32, torch.bfloat16, torch.float16):
                    od = str(out).removeprefix("torch.")
                    where = f"{shape[0]}x{shape[1]}" + ("/transposed" * (layout != "contiguous"))
                    cases.append(
                        Case(
                            id=f"dequant/{fmt.name}/{gran.name}/{where}/out={od}",
                            kind="dequant",
                            description=f"every code shuffled into {shape[0]}x{shape[1]} "
                            f"({layout}), a random 1/scale per {gran.name} block; out {od}",
                            run=partial(
                                _run_dequant_blocks,
                                fmt=fmt,
                                gran=gran,
                                out_dtype=out,
                                shape=shape,
                                layout=layout,
                            ),
                            unsupported=reason,
                        )
                    )
    return cases


def _amax_input(env: Env, which: str, dtype: torch.dtype) -> torch.Tensor:
    g = env.generator(11)
    mags = torch.randint(-20, 20, (130, 1), generator=g).double()
    x = torch.randn(130, 300, generator=g) * torch.pow(2.0, mags).float()
    x[5, 7] = -3.0e4  # a negative element holds the maximum magnitude of its block
    if which == "nan":
        x[77, 201] = torch.nan
    elif which == "inf":
        x[129, 299] = -torch.inf
    elif which == "zeros":
        x[:64] = -0.0
    if which == "square":
        x = x[:128, :128]
    x = x.to(dtype)
    return data.strided_view(x, "transposed") if which == "transposed" else x


def _run_amax(env: Env, gran: Granularity, which: str, dtype: torch.dtype) -> CaseResult:
    x = _amax_input(env, which, dtype)
    want = _REF.amax(x, gran)
    got = env.backend.amax(env.to_device(x), gran)
    problem = data.result_problem(
        got, dtype=want.dtype, shape=tuple(want.shape), device=env.device, what="amax"
    )
    if problem:
        return CaseResult(Verdict.FAILED, detail=problem)
    got = got.cpu()
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
        reason = not_declared(caps.why_not_scaling(env.device.type, gran))
        for which in ("random", "nan", "inf", "zeros", "square", "transposed"):
            for dtype in (torch.float32, torch.bfloat16, torch.float16):
                dt = str(dtype).removeprefix("torch.")
                cases.append(
                    Case(
                        id=f"amax/{gran.name}/{which}/{dt}",
                        kind="amax",
                        description=f"130x300 {dt}, magnitudes 2^-20..2^20, {which} "
                        "(square: its 128x128 corner; transposed: as a transposed view)",
                        run=partial(_run_amax, gran=gran, which=which, dtype=dtype),
                        unsupported=reason,
                    )
                )
    return cases
