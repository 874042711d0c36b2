"""Scaled-GEMM cases, judged by the analytic error bound of the declared accumulator.

Inputs are FP8 codes and scales made on the CPU (by the reference quantiser, or drawn as
random codes with power-of-two scales), moved to the backend's device (transposed operands
as ``.t()`` views), and the result compared with the float64 product of the dequantised
operands. An element passes when ``|C_backend - C_exact| <= bound`` with the bound of
:func:`portable_fp8.numerics.gemm.gemm_error_bound` for the accumulator the backend declares,
plus the float64 reference's own rounding (``gamma_{K+2}`` at ``u = 2**-53`` times
``sum |a||b|``, some 2**-29 of the fp32 term). Where the reference output (the exact value
rounded to the output dtype, as :func:`~portable_fp8.numerics.gemm.reference_scaled_mm`
rounds it) is NaN the backend must give NaN; where it is +-inf, the same infinity.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, replace
from functools import partial

import torch
from portable_fp8.backends.reference import ReferenceBackend

from portable_fp8.dispatch.backend import DEFAULT_GEMM_GRANULARITIES, Capabilities
from portable_fp8.numerics.cast import as_fp8_tensor, codes_of, codes_to_float
from portable_fp8.numerics.formats import FORMATS, Format, element_formats
from portable_fp8.numerics.gemm import abs_product_sum, gemm_error_bound
from portable_fp8.numerics.granularity import GRANULARITIES, Granularity, as_2d_shape
from portable_fp8.numerics.tensor import Fp8Tensor

from .. import data
from ..model import Case, CaseResult, Env, Verdict, not_declared

__all__ = ["GemmSpec", "gemm_cases", "run_gemm"]

_REF = ReferenceBackend()
_OUT_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_DATA_TEXT = {
    "randn": "standard normal values quantised by the reference (current scaling)",
    "positive": "uniform [0, 1) values quantised by the reference (no cancellation: the "
    "accumulation error grows with K)",
    "codes": "uniformly random finite FP8 codes, random power-of-two scales 2^-3..2^3",
    "zeros": "A all zeros",
    "nan": "random codes with a NaN code in A",
    "inf": "random codes with +inf and -inf codes in A",
    "huge": "random codes with power-of-two scales putting sum |a||b| near 2^126",
    "tiny": "random codes with power-of-two scales putting the smallest product at 2^-126",
    "fp8-subnormal": "A made of FP8 subnormal codes only (B random codes), scale 1",
    "inf-zero": "random codes; A[0, 0] = +inf opposite B's zero row 0 (C row 0: NaN), "
    "A[1, 2] = -inf opposite nonzero B row 2 (C row 1: -inf x sign), NaN at A[2, 1] "
    "(C row 2: NaN), -0 codes in A row 3",
}


@dataclass(frozen=True)
class GemmSpec:
    """One GEMM: formats, granularities, shape, operand layouts, output and addends, data."""

    fa: str
    fb: str
    ga: str
    gb: str
    m: int
    k: int
    n: int
    layout: str = "nn"  # "t" marks an operand passed as a .t() view of a contiguous tensor
    out: torch.dtype = torch.float32
    bias: bool = False
    c: bool = False
    data: str = "randn"
    #: Asked for with fast_accum=True, which the op layer passes on as True only to a backend
    #: that declares a fast accumulator (judged by it); any other runs (and is judged by) its
    #: own.
    fast_accum: bool = False

    @property
    def id(self) -> str:
        extra = "/bias" * self.bias + "/c" * self.c + "/fast-accum" * self.fast_accum
        return (
            f"gemm/{self.fa}x{self.fb}/{self.ga}x{self.gb}/{self.m}x{self.k}x{self.n}/"
            f"{self.layout}/out={_OUT_NAMES[self.out]}{extra}/{self.data}"
        )

    def describe(self) -> str:
        parts = [
            f"A {self.m}x{self.k} {self.fa} {self.ga}",
            f"B {self.k}x{self.n} {self.fb} {self.gb}",
            f"layout {self.layout} (t: operand passed as a transposed view)",
            f"out {_OUT_NAMES[self.out]}",
            _DATA_TEXT[self.data],
        ]
        if self.bias:
            parts.append("bias (N,)")
        if self.c:
            parts.append("accumulate into C (M, N)")
        if self.fast_accum:
            parts.append("fast_accum=True (the declared fast accumulator, if any)")
        return "; ".join(parts)


def _unsupported(spec: GemmSpec, caps: Capabilities, device: str) -> str | None:
    why = caps.why_not_gemm(
        device, spec.fa, spec.fb, spec.ga, spec.gb, spec.out, bias=spec.bias, c=spec.c
    )
    dims = caps.why_not_gemm_dims(spec.k, spec.n)
    return not_declared(why) or (None if dims is None else f"needs {dims}")


# -- inputs --------------------------------------------------------------------------------


def _random_codes(fmt: Format, shape, g: torch.Generator, subnormal: bool = False):
    values = fmt.code_values
    ok = torch.isfinite(values)
    if subnormal:
        ok &= (values.abs() < fmt.min_normal) & (values != 0)
    allowed = ok.nonzero().reshape(-1)
    pick = torch.randint(0, allowed.numel(), shape, generator=g)
    return allowed[pick].to(torch.uint8)


def _pow2_scales(gran: Granularity, shape2d, exponent: int, spread: int, g) -> torch.Tensor:
    sshape = gran.scale_shape(shape2d)
    e = torch.randint(-spread, spread + 1, sshape, generator=g) if spread else torch.zeros(sshape)
    return torch.pow(2.0, (e + exponent).double()).float()  # quantisation scales


def _extreme_exponent(spec: GemmSpec, kind: str) -> int:
    """Per-operand scale exponent (of the dequantisation factor) for huge/tiny data.

    huge: max|a| max|b| K 2**(2e) <= 2**126, so fp32 partial sums never overflow.
    tiny: min_subnormal_a min_subnormal_b 2**(2e) >= 2**-126, so every product (and every
    nonzero sum of them, a multiple of that) is a normal fp32 number.
    """
    fa, fb = FORMATS[spec.fa], FORMATS[spec.fb]
    if kind == "huge":
        top = math.log2(fa.max) + math.log2(fb.max) + math.log2(spec.k)
        return math.floor((126 - top) / 2)
    low = math.log2(fa.min_subnormal) + math.log2(fb.min_subnormal)
    return math.ceil((-126 - low) / 2)


def _operand(spec: GemmSpec, which: str, g: torch.Generator) -> Fp8Tensor:
    """One operand on the CPU, in the layout the backend will see it."""
    fmt = FORMATS[spec.fa if which == "a" else spec.fb]
    gran = GRANULARITIES[spec.ga if which == "a" else spec.gb]
    shape = (spec.m, spec.k) if which == "a" else (spec.k, spec.n)
    transposed = spec.layout[0 if which == "a" else 1] == "t"
    stored_shape = shape[::-1] if transposed else shape
    stored_gran = gran.transposed() if transposed else gran
    if spec.data in ("randn", "positive"):
        x = torch.randn(stored_shape, generator=g)
        if spec.data == "positive":
            x = torch.rand(stored_shape, generator=g)
        q = _REF.quantize_dynamic(
            x, fmt, stored_gran, margin=0, power_of_two=False, saturate=True, rand_bits=None
        )
    else:
        sub = spec.data == "fp8-subnormal" and which == "a"
        codes = _random_codes(fmt, stored_shape, g, subnormal=sub)
        if spec.data == "zeros" and which == "a":
            codes.zero_()
        exponent, spread = 0, 3
        if spec.data in ("huge", "tiny"):
            exponent, spread = -_extreme_exponent(spec, spec.data), 0
        elif spec.data == "fp8-subnormal":
            spread = 0
        scale = _pow2_scales(stored_gran, stored_shape, exponent, spread, g)
        q = Fp8Tensor(as_fp8_tensor(codes, fmt), scale, fmt, stored_gran)
    if spec.data == "inf-zero":
        _place_inf_zero(q, fmt, which, transposed)
    if which == "a" and spec.data in ("nan", "inf"):
        flat = codes_of(q.data).reshape(-1)
        if spec.data == "nan":
            flat[flat.numel() // 3] = fmt.nan_code
        else:
            flat[flat.numel() // 3] = fmt.inf_code
            flat[flat.numel() // 2] = fmt.inf_code | fmt.sign_bit
    return q.t() if transposed else q


def _place_inf_zero(q: Fp8Tensor, fmt: Format, which: str, transposed: bool) -> None:
    """Write the ``inf-zero`` specials into the stored codes (see ``_DATA_TEXT``)."""
    codes = codes_of(q.data)
    logical = codes.t() if transposed else codes  # (M, K) for A, (K, N) for B
    if which == "a":
        logical[0, 0] = fmt.inf_code
        logical[1, 2] = fmt.inf_code | 0x80
        logical[1, 0] = 0  # row 1 meets B's zero row with a zero: stays -inf, not NaN
        logical[2, 1] = fmt.nan_code
        logical[3] = 0x80 if fmt.has_negative_zero else 0
    else:
        logical[0] = 0  # B row 0: zeros, opposite A's +inf
        nonzero = logical[2] & 0x7F
        logical[2] = torch.where(nonzero == 0, logical[2] | 0x08, logical[2])  # no zero in row 2
        logical[2] &= 0x7F  # and positive: C row 1 is -inf everywhere


def _on_device(env: Env, q: Fp8Tensor, transposed: bool) -> Fp8Tensor:
    """Move an operand to the device, keeping a transposed operand a transposed view."""
    base = q.t() if transposed else q
    moved = Fp8Tensor(
        env.to_device(base.data), env.to_device(base.scale), q.format, base.granularity
    )
    return moved.t() if transposed else moved


def _dequant64(q: Fp8Tensor) -> torch.Tensor:
    values = codes_to_float(codes_of(q.data), q.format).double()
    ra = q.granularity.expand(q.scale_inv.double(), as_2d_shape(q.shape))
    return values * ra


# -- the check -----------------------------------------------------------------------------

#: GEMMs up to this many multiply-adds also get the second call (see run_gemm).
_SECOND_CALL_MAX = 1 << 22


def _negated(q: Fp8Tensor) -> Fp8Tensor:
    """``-q`` (the sign bit of every code flipped; NaN codes kept, formats without -0 keep 0)."""
    codes = codes_of(q.data)
    fmt = q.format
    flipped = codes ^ 0x80
    keep = torch.isnan(fmt.code_values.to(codes.device)[codes.to(torch.int64)]) | (
        (codes & 0x7F) == 0
    )
    if fmt.has_negative_zero:
        keep &= (codes & 0x7F) != 0
    neg = torch.where(keep, codes, flipped)
    return Fp8Tensor(as_fp8_tensor(neg, fmt), q.scale, fmt, q.granularity)


def run_gemm(env: Env, spec: GemmSpec) -> CaseResult:
    """Run one GEMM on the backend and judge it (see the module docstring)."""
    g = env.generator(zlib.crc32(spec.id.encode()) & 0xFFFF)
    a, b = _operand(spec, "a", g), _operand(spec, "b", g)
    bias = torch.randn(spec.n, generator=g).to(spec.out) if spec.bias else None
    c = torch.randn(spec.m, spec.n, generator=g).mul(4).to(spec.out) if spec.c else None
    caps = env.backend.capabilities
    fast = caps.runs_fast_accumulator(spec.fast_accum)  # as the op layer decides
    dev_a = _on_device(env, a, spec.layout[0] == "t")
    dev_b = _on_device(env, b, spec.layout[1] == "t")
    dev_bias = None if bias is None else env.to_device(bias)
    dev_c = None if c is None else env.to_device(c)
    first = env.backend.scaled_mm(
        dev_a, dev_b, out_dtype=spec.out, bias=dev_bias, c=dev_c, fast_accum=fast
    )
    problem = data.result_problem(first, dtype=spec.out, shape=(spec.m, spec.n), device=env.device)
    if problem:
        return CaseResult(Verdict.FAILED, detail=problem)
    got = first.cpu().clone()
    # A second call (on A negated, so every nonzero output changes) must not disturb the
    # first result: results are independent tensors, not a reused buffer.
    if spec.m * spec.k * spec.n <= _SECOND_CALL_MAX:
        second = env.backend.scaled_mm(
            _negated(dev_a), dev_b, out_dtype=spec.out, bias=dev_bias, c=dev_c, fast_accum=fast
        )
        if not bool(data.float_mismatches(first, got).logical_not().all()):
            return CaseResult(
                Verdict.FAILED,
                detail="a second scaled_mm call changed the first call's result (the result "
                "aliases a buffer the backend reuses)",
            )
        if second.numel() and second.data_ptr() == first.data_ptr():
            return CaseResult(Verdict.FAILED, detail="two calls returned the same storage")
    exact = _dequant64(a) @ _dequant64(b)
    addends = torch.zeros_like(exact)
    if bias is not None:
        exact = exact + bias.double().reshape(1, -1)
        addends = addends + bias.double().abs().reshape(1, -1)
    if c is not None:
        exact = exact + c.double()
        addends = addends + c.double().abs()
    reference_out = exact.to(torch.float32).to(spec.out)  # the contract's output rounding
    abs_sum = abs_product_sum(
        a.data, b.data, a.format, b.format, a.scale, b.scale, a.granularity, b.granularity
    )
    bound = gemm_error_bound(
        abs_sum,
        spec.k,
        accumulator=caps.fast_accumulator if fast else caps.accumulator,
        out_dtype=spec.out,
        exact=exact,
        addends=addends,
    )
    n64 = spec.k + 2
    bound = bound + n64 * 2.0**-53 / (1 - n64 * 2.0**-53) * (abs_sum + addends)
    return _judge(env, spec, got.double(), exact, reference_out.double(), bound, abs_sum + addends)


def _judge(
    env: Env,
    spec: GemmSpec,
    got: torch.Tensor,
    exact: torch.Tensor,
    ref_out: torch.Tensor,
    bound: torch.Tensor,
    magnitude: torch.Tensor,
) -> CaseResult:
    """Elementwise verdict: NaN/inf as the reference output, finite ones within the bound."""
    ref_nan = torch.isnan(ref_out)
    ref_inf = torch.isinf(ref_out)
    special_bad = (ref_nan & ~torch.isnan(got)) | (ref_inf & (got != ref_out))
    finite = ~(ref_nan | ref_inf)
    err = torch.where(finite, (got - exact).abs(), torch.zeros_like(exact))
    err = torch.where(finite & torch.isnan(got), torch.inf, err)
    ratio = torch.where(finite, err / bound, torch.zeros_like(err))
    over = finite & ~(err <= bound)
    bad = over | special_bad
    # Relative to sum |a||b| (+ |bias| + |C|): what the error-versus-K plot shows.
    rel = finite & (magnitude > 0)
    rel_err = float((err[rel] / magnitude[rel]).max()) if rel.any() else 0.0
    rel_bound = float((bound[rel] / magnitude[rel]).max()) if rel.any() else 0.0
    max_ratio = float(ratio.max()) if ratio.numel() else 0.0
    extra = {
        "k": spec.k,
        "m": spec.m,
        "n": spec.n,
        "data": spec.data,
        "max_error_over_bound": max_ratio,
        "rel_err": rel_err,
        "rel_bound": rel_bound,
        "nonfinite_reference": int((~finite).sum()),
    }
    max_err = float(err.max()) if err.numel() else 0.0
    i = int(ratio.reshape(-1).argmax()) if ratio.numel() else 0
    bound_at = float(bound.reshape(-1)[i]) if bound.numel() else 0.0
    summary = (
        f"max |error|/bound = {max_ratio:.3g}; max |error| = {max_err:.3g}; "
        f"max relative (to sum|a||b|) error {rel_err:.3g} vs bound {rel_bound:.3g}"
    )
    if not bad.any():
        return CaseResult(Verdict.PASSED, max_err, bound_at, detail=summary, extra=extra)
    j = int(bad.reshape(-1).nonzero()[0, 0])
    r, col = divmod(j, spec.n)
    what = (
        f"{int(over.sum())} elements over the bound, {int(special_bad.sum())} NaN/inf "
        f"mismatches; first at [{r}, {col}]: got {float(got[r, col])!r}, exact "
        f"{float(exact[r, col])!r}, bound {float(bound[r, col]):.3g}; " + summary
    )
    repro = (
        "from portable_fp8.conformance import run_case\n"
        f"print(run_case({spec.id!r}, backend={env.backend.name!r}).detail)"
    )
    return CaseResult(Verdict.FAILED, max_err, bound_at, detail=what, reproducer=repro, extra=extra)


# -- the case list -------------------------------------------------------------------------


def _preferred(options, preferred):
    options = sorted(options)
    return preferred if preferred in options else (options[0] if options else preferred)


def _specs(env: Env) -> list[GemmSpec]:
    caps = env.backend.capabilities
    fa, fb = _preferred(caps.gemm_formats, ("e4m3fn", "e4m3fn"))
    ga, gb = _preferred(caps.gemm_granularities, ("tensorwise", "tensorwise"))
    out_names = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
    outs = sorted(set(out_names) | set(caps.out_dtypes), key=lambda d: out_names.get(d, 9))
    out = torch.bfloat16 if torch.bfloat16 in caps.out_dtypes else outs[0]
    # fp32 output where declared, so that the accumulator, not the output, dominates.
    base_out = torch.float32 if torch.float32 in caps.out_dtypes else out
    base = GemmSpec(fa, fb, ga, gb, 48, 160, 64, out=base_out)
    gran_pairs = sorted(set(DEFAULT_GEMM_GRANULARITIES) | set(caps.gemm_granularities))
    names = [f.name for f in element_formats()]
    specs: list[GemmSpec] = []
    # Every format pair (declared or not: undeclared ones are reported "not supported").
    for x in names:
        for y in names:
            specs.append(replace(base, fa=x, fb=y, data="codes"))
    # Every granularity pair x output dtype, on normal data and on all-positive data.
    for gpair in gran_pairs:
        for o in outs:
            for d in ("randn", "positive"):
                specs.append(replace(base, ga=gpair[0], gb=gpair[1], k=320, out=o, data=d))
        for layout in ("tn", "nt", "tt"):
            specs.append(replace(base, ga=gpair[0], gb=gpair[1], k=320, layout=layout))
        # M = N = K: A's rowwise and B's columnwise scales (or blocks) have equal lengths,
        # so only their layout tells them apart; every operand layout.
        for layout in ("nn", "tn", "nt", "tt"):
            specs.append(
                replace(base, ga=gpair[0], gb=gpair[1], m=128, k=128, n=128, layout=layout)
            )
        # K a multiple of 128 and N not: a partial last 128x128 weight block, on a shape a
        # kernel may take its fast path for (N = 160 once gave wrong columns past 128).
        specs.append(replace(base, ga=gpair[0], gb=gpair[1], m=48, k=256, n=160))
        if env.full:
            for m, k, n in ((37, 200, 45), (1, 129, 1), (130, 257, 17)):
                specs.append(replace(base, ga=gpair[0], gb=gpair[1], m=m, k=k, n=n, data="codes"))
    # Bias and accumulation into C, every output dtype.
    for o in outs:
        specs += [
            replace(base, out=o, bias=True),
            replace(base, out=o, c=True),
            replace(base, out=o, bias=True, c=True, layout="tn"),
        ]
    # Adversarial shapes (non-multiples of 16 are "not supported" when K, N must be multiples).
    # Empty operands (M, N or K of 0: a K = 0 product is all zeros, plus bias/C) included.
    shapes = [(1, 1, 1), (3, 5, 7), (17, 33, 65), (16, 16, 16), (1, 64, 16)]
    shapes += [(0, 32, 16), (16, 0, 16), (16, 32, 0)]
    if env.full:
        shapes += [(127, 129, 63), (256, 48, 1), (1, 4096, 1), (1000, 1000, 24), (64, 8192, 64)]
    for m, k, n in shapes:
        specs.append(replace(base, m=m, k=k, n=n, out=out, data="codes"))
    # Special values.
    inf_pair = (
        (fa, fb)
        if FORMATS[fa].has_inf
        else _preferred([p for p in caps.gemm_formats if FORMATS[p[0]].has_inf], ("e5m2", "e5m2"))
    )
    for o in outs:
        for d in ("zeros", "nan", "huge", "tiny", "fp8-subnormal"):
            specs.append(replace(base, m=24, k=96, n=32, out=o, data=d))
        specs.append(
            replace(base, fa=inf_pair[0], fb=inf_pair[1], m=24, k=96, n=32, out=o, data="inf")
        )
        for layout in ("nn", "tt"):
            specs.append(
                replace(
                    base,
                    fa=inf_pair[0],
                    fb=inf_pair[1],
                    m=24,
                    k=96,
                    n=32,
                    out=o,
                    layout=layout,
                    data="inf-zero",
                )
            )
    # K sweep (the error-versus-K plot): fp32 output, so the accumulator dominates.
    ks = (16, 64, 256, 1024, 4096, 16384) if env.full else (16, 256, 2048)
    sweep_grans = gran_pairs if env.full else [(ga, gb)]
    for gpair in sweep_grans:
        for k in ks:
            for d in ("positive", "randn"):
                specs.append(replace(base, ga=gpair[0], gb=gpair[1], m=32, k=k, n=32, data=d))
    # fast_accum=True, judged by the declared fast accumulator (or the default one):
    # the K sweep on the base pair, every granularity pair, bias/C, specials, a ragged shape.
    # The sweep stops at K = 4096: an unpromoted accumulator's bound gamma_K(u) is infinite
    # once K u >= 1 (Hopper's fast mode: u = 2**-13, K >= 8192), where a case would judge
    # nothing (a narrow accumulator can stagnate on long sums of one sign).
    fast = replace(base, fast_accum=True)
    for k in (k for k in ks if k <= 4096):
        for d in ("positive", "randn"):
            specs.append(replace(fast, m=32, k=k, n=32, data=d))
    for gpair in gran_pairs:
        specs.append(replace(fast, ga=gpair[0], gb=gpair[1], k=320))
    specs += [replace(fast, out=out, bias=True, c=True), replace(fast, m=37, k=200, n=45)]
    for d in ("nan", "huge", "tiny"):
        specs.append(replace(fast, m=24, k=96, n=32, data=d))
    seen, unique = set(), []
    for s in specs:
        if s.id not in seen:
            seen.add(s.id)
            unique.append(s)
    return unique


def gemm_cases(env: Env) -> list[Case]:
    """Format pairs, granularity pairs x out dtypes, layouts, bias/C, shapes, specials, K sweep."""
    caps = env.backend.capabilities
    return [
        Case(
            id=s.id,
            kind="gemm",
            description=s.describe(),
            run=partial(run_gemm, spec=s),
            unsupported=_unsupported(s, caps, env.device.type),
        )
        for s in _specs(env)
    ]
