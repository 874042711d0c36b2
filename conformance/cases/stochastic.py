"""Stochastic rounding cases.

*Explicit bits*: with the random words given, the result is bit-identical to the reference
(the contract fixes which word rounds which way; see :mod:`portable_fp8.numerics.cast`).

*Seeded statistics*: the same value ``x`` is cast ``N`` times with independent random words
from a seeded generator. Every result must be one of ``x``'s two neighbours ``lo < hi`` in the
format, and the fraction rounded up must match ``f = (|x| - lo) / (hi - lo)``. This also
holds for a backend that draws its own random numbers instead of using the words.

Confidence bound. The N roundings are independent Bernoulli(p) trials with
``|p - f| <= 2**-32`` (the contract's bias for words of 32 bits). By Hoeffding's inequality
``P(|k/N - p| >= t) <= 2 exp(-2 N t**2)``; with ``t = sqrt(ln(2 / delta) / (2 N))`` a
conformant backend fails a case with probability at most ``delta = 1e-9``, so a whole run
(well under 1000 such cases) raises a false alarm with probability under 1e-6. The check is
``|k/N - f| <= t + 2**-32``.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from portable_fp8.backends.reference import ReferenceBackend

from portable_fp8.numerics.cast import codes_of
from portable_fp8.numerics.formats import FORMATS, Format
from portable_fp8.numerics.granularity import TENSORWISE

from .. import data
from ..model import Case, CaseResult, Env, Verdict, not_declared

__all__ = ["stochastic_cases", "hoeffding_tolerance", "FALSE_ALARM_PROBABILITY"]

_REF = ReferenceBackend()
#: Probability that a conformant backend fails one statistical case.
FALSE_ALARM_PROBABILITY = 1e-9
_N = {"quick": 1 << 15, "full": 1 << 20}
_FRACTIONS = (0.5, 0.25, 0.1, 0.7)


def hoeffding_tolerance(n: int, delta: float = FALSE_ALARM_PROBABILITY) -> float:
    """``t`` with ``P(|k/n - p| >= t) <= delta`` for n Bernoulli(p) trials (Hoeffding)."""
    return math.sqrt(math.log(2 / delta) / (2 * n))


def _explicit_inputs(env: Env, fmt: Format) -> tuple[torch.Tensor, torch.Tensor]:
    g = env.generator(31)
    x = torch.cat([data.fp32_random(1 << 14, g), data.fp32_edge_cases(fmt, 1.0)])
    bits = torch.randint(-(2**31), 2**31, x.shape, dtype=torch.int64, generator=g)
    bits[:64] = 0  # extreme words: never round up / round up whenever f > 0 ...
    bits[64:128] = -1  # ... and 0xFFFFFFFF, which rounds up only when f * 2**32 > 2**32 - 1
    return x, bits.to(torch.int32)


def _run_explicit(env: Env, fmt: Format) -> CaseResult:
    x, bits = _explicit_inputs(env, fmt)
    one = torch.tensor(1.0)
    want = _REF.cast_to_fp8(x, fmt, one, TENSORWISE, saturate=True, rand_bits=bits)
    got = env.backend.cast_to_fp8(
        env.to_device(x),
        fmt,
        env.to_device(one),
        TENSORWISE,
        saturate=True,
        rand_bits=env.to_device(bits),
    ).cpu()
    bad = data.code_mismatches(got, want, fmt)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return CaseResult(Verdict.PASSED, 0, 0, detail=f"{x.numel()} elements bit-identical")
    idx = bad.nonzero().reshape(-1)[:4]
    xs, bs = x[idx], bits[idx]
    repro = (
        "import torch, portable_fp8 as fp8\n"
        f"x = {data.tensor_literal(xs, 'float32')}\n"
        f"bits = torch.tensor({bs.tolist()}, dtype=torch.int32)\n"
        f"q = fp8.cast_to_fp8(x, {fmt.name!r}, rounding='stochastic', rand_bits=bits, "
        f"backend={env.backend.name!r})\n"
        f"print([hex(c) for c in q.view(torch.uint8).tolist()])  # reference: "
        f"{[hex(c) for c in codes_of(want)[idx].tolist()]}"
    )
    first = int(idx[0])
    return CaseResult(
        Verdict.FAILED,
        n_bad,
        0,
        detail=f"{n_bad} of {x.numel()} codes differ; first x={float(x[first])!r} "
        f"bits={int(bits[first]) & 0xFFFFFFFF:#010x}: got 0x{int(codes_of(got)[first]):02x} "
        f"want 0x{int(codes_of(want)[first]):02x}",
        reproducer=repro,
    )


def _neighbours(fmt: Format) -> list[tuple[str, float, float]]:
    """(label, lo, hi) pairs of neighbouring positive values: normal, subnormal, near max."""
    v = fmt.code_values
    finite = v[torch.isfinite(v) & (v >= 0)].unique().sort().values.tolist()
    i_one = finite.index(1.0)
    pairs = [("near-1", finite[i_one], finite[i_one + 1]), ("top", finite[-2], finite[-1])]
    if fmt.has_zero:
        pairs.append(("subnormal", finite[0], finite[1]))
    else:  # E8M0: no zero; the bottom two scales instead
        pairs.append(("bottom", finite[0], finite[1]))
    return pairs


def _run_seeded(
    env: Env, fmt: Format, label: str, lo: float, hi: float, frac: float, negative: bool
) -> CaseResult:
    x64 = lo + frac * (hi - lo)
    x = torch.tensor(x64, dtype=torch.float32)
    f = (float(x) - lo) / (hi - lo)  # the fraction of the fp32 input actually cast
    sign = -1.0 if negative else 1.0
    n = _N[env.profile]
    xs = torch.full((n,), sign * float(x), dtype=torch.float32)
    bits = torch.randint(-(2**31), 2**31, (n,), dtype=torch.int64, generator=env.generator(37))
    got = env.backend.cast_to_fp8(
        env.to_device(xs),
        fmt,
        env.to_device(torch.tensor(1.0)),
        TENSORWISE,
        saturate=True,
        rand_bits=env.to_device(bits.to(torch.int32)),
    ).cpu()
    values = fmt.code_values[codes_of(got).to(torch.int64)]
    is_hi = values == sign * hi
    is_lo = values == sign * lo
    others = int((~(is_hi | is_lo)).sum())
    k = int(is_hi.sum())
    tol = hoeffding_tolerance(n) + 2.0**-32
    dev = abs(k / n - f)
    detail = f"x={sign * float(x)!r} between {lo!r} and {hi!r}: f={f:.6f}, up {k}/{n}={k / n:.6f}"
    extra = {"n": n, "f": f, "up_fraction": k / n, "tolerance": tol}
    if others:
        odd = values[~(is_hi | is_lo)].unique()[:4].tolist()
        return CaseResult(
            Verdict.FAILED,
            float(others),
            0.0,
            detail=f"{others} results are not a neighbour of x (e.g. {odd}); " + detail,
            extra=extra,
        )
    verdict = Verdict.PASSED if dev <= tol else Verdict.FAILED
    return CaseResult(verdict, dev, tol, detail=detail + f"; |k/N - f| <= {tol:.2e}", extra=extra)


_WORDS = {"random": None, "zero": 0, "ones": -1}  # -1: the word 0xFFFFFFFF


def _rule_inputs(env: Env, fmt: Format, which: str, words: str):
    """(x, bits, lo, hi): ``exact``: every finite value of the format (both signs), so
    lo = hi = x; ``between``: a value strictly between every pair of neighbouring finite
    values (at a random fraction), with lo and hi those neighbours (signed as x)."""
    g = env.generator(43)
    v = fmt.code_values
    finite = v[torch.isfinite(v)].unique().sort().values.double()
    if which == "exact":
        lo = hi = finite
        x = finite
    else:
        pos = finite[finite >= 0]
        lo, hi = pos[:-1], pos[1:]
        frac = torch.rand(lo.shape, generator=g, dtype=torch.float64) * 0.98 + 0.01
        x = lo + frac * (hi - lo)
        if fmt.signed:
            x, lo, hi = torch.cat([x, -x]), torch.cat([lo, -lo]), torch.cat([hi, -hi])
    x = x.to(torch.float32)
    if _WORDS[words] is None:
        bits = torch.randint(-(2**31), 2**31, x.shape, dtype=torch.int64, generator=g)
    else:
        bits = torch.full(x.shape, _WORDS[words], dtype=torch.int64)
    return x, bits.to(torch.int32), lo, hi


def _run_rule(env: Env, fmt: Format, which: str, words: str) -> CaseResult:
    """Exact values stay exact and others go to one of their two neighbours, for any words;
    and the codes are the reference's (the words 0 and 0xFFFFFFFF at the edges of the rule)."""
    x, bits, lo, hi = _rule_inputs(env, fmt, which, words)
    one = torch.tensor(1.0)
    want = _REF.cast_to_fp8(x, fmt, one, TENSORWISE, saturate=True, rand_bits=bits)
    got = env.backend.cast_to_fp8(
        env.to_device(x),
        fmt,
        env.to_device(one),
        TENSORWISE,
        saturate=True,
        rand_bits=env.to_device(bits),
    )
    problem = data.result_problem(
        got, dtype=fmt.torch_dtype, shape=tuple(x.shape), device=env.device
    )
    if problem:
        return CaseResult(Verdict.FAILED, detail=problem)
    got = got.cpu()
    values = fmt.code_values[codes_of(got).to(torch.int64)].double()
    # -0 and +0 are one value here: the neighbour rule is about values, the codes are
    # compared exactly below.
    off = ~((values == lo) | (values == hi))
    n_off = int(off.sum())
    bad = data.code_mismatches(got, want, fmt)
    n_bad = int(bad.sum())
    if n_off == 0 and n_bad == 0:
        return CaseResult(Verdict.PASSED, 0, 0, detail=f"{x.numel()} values")
    parts = []
    if n_off:
        i = int(off.nonzero()[0, 0])
        rule = "not exact" if which == "exact" else "not one of its two neighbours"
        parts.append(
            f"{n_off} results {rule} (first x={float(x[i])!r}, word "
            f"{int(bits[i]) & 0xFFFFFFFF:#010x}: got {float(values[i])!r}, allowed "
            f"{float(lo[i])!r}, {float(hi[i])!r})"
        )
    if n_bad:
        i = int(bad.nonzero()[0, 0])
        parts.append(
            f"{n_bad} codes differ from the reference (first x={float(x[i])!r} word "
            f"{int(bits[i]) & 0xFFFFFFFF:#010x}: got 0x{int(codes_of(got)[i]):02x} want "
            f"0x{int(codes_of(want)[i]):02x})"
        )
    return CaseResult(Verdict.FAILED, n_off + n_bad, 0, detail="; ".join(parts))


def stochastic_cases(env: Env) -> list[Case]:
    """Explicit-bits bit-exactness and seeded statistics for every declared cast format."""
    caps = env.backend.capabilities
    cases = []
    for fmt in FORMATS.values():
        reason = not_declared(caps.why_not_cast(env.device.type, fmt, rounding="stochastic"))
        cases.append(
            Case(
                id=f"sr/{fmt.name}/explicit-bits",
                kind="stochastic",
                description="16384 random fp32 values + the format's decision points, random "
                "32-bit words (and the extreme words 0 and 0xFFFFFFFF)",
                run=partial(_run_explicit, fmt=fmt),
                unsupported=reason,
            )
        )
        for which in ("exact", "between"):
            for words in _WORDS:
                cases.append(
                    Case(
                        id=f"sr/{fmt.name}/{which}/words={words}",
                        kind="stochastic",
                        description=(
                            "every finite value of the format (must stay exact)"
                            if which == "exact"
                            else "a value inside every gap between neighbouring values "
                            "(must give one of the two)"
                        )
                        + f"; {words} 32-bit words",
                        run=partial(_run_rule, fmt=fmt, which=which, words=words),
                        unsupported=reason,
                    )
                )
        for label, lo, hi in _neighbours(fmt):
            for frac in _FRACTIONS if env.full else _FRACTIONS[:2]:
                for negative in (False, True) if fmt.signed else (False,):
                    sign = "-" if negative else "+"
                    cases.append(
                        Case(
                            id=f"sr/{fmt.name}/seeded/{sign}{label}/f={frac:g}",
                            kind="stochastic",
                            description=f"one value between {lo!r} and {hi!r} at fraction "
                            f"{frac:g}, sign {sign}, cast {_N[env.profile]} times",
                            run=partial(
                                _run_seeded,
                                fmt=fmt,
                                label=label,
                                lo=lo,
                                hi=hi,
                                frac=frac,
                                negative=negative,
                            ),
                            unsupported=reason,
                        )
                    )
    return cases
