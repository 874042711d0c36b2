"""Fingerprint cases: the measured GEMM accumulator must not contradict the declared one.

The probes of :mod:`portable_fp8.conformance.fingerprint` measure how many fraction bits
the accumulator keeps at each distance in K, how it rounds, and where it widens
(promotion). The declared :class:`~portable_fp8.numerics.gemm.AccumulatorModel`
(``Capabilities.accumulator``; ``fast_accumulator`` for the ``fast`` case) promises:

* at least ``mantissa_bits`` fraction bits at every distance (exact: no limit but the
  output's own when the probes cannot subtract C: 23 bits for fp32 output);
* ``rounding="nearest"``: the measured rounding is round-to-nearest (truncation, or
  different rounding of +P and -P, contradicts it; a backend declaring truncation may round
  to nearest: the bound of truncation covers it);
* ``promote_every=P`` (with fewer than 23 bits): wider accumulation at every probed distance
  of at least P.

A contradiction fails the case with the measured and declared values in its detail and
``extra``. Where nothing can be measured (no tensorwise GEMM) the case says so and passes:
there is nothing measured to contradict the declaration.
"""

from __future__ import annotations

from functools import partial

import torch

from portable_fp8.numerics.gemm import AccumulatorModel

from ..fingerprint import measure_accumulator
from ..model import Case, CaseResult, Env, Verdict

__all__ = ["accumulator_cases"]


def _required_bits(model: AccumulatorModel | None, accumulate: bool, out: torch.dtype) -> int:
    """Fraction bits the declaration promises the probes will see."""
    promised = 23 if model is None else model.mantissa_bits  # exact: fp32's 23 at least
    if not accumulate:  # big + small is rounded to the output type before it is read
        promised = min(promised, torch.finfo(out).nmant)
    return promised


def _run(env: Env, fast: bool) -> CaseResult:
    caps = env.backend.capabilities
    model = caps.fast_accumulator if fast else caps.accumulator
    declared = "exact" if model is None else vars(model)
    try:
        m = measure_accumulator(env, fast=fast)
    except ValueError as exc:
        return CaseResult(Verdict.PASSED, detail=f"not measurable: {exc}")
    p = m["prober"]
    need = _required_bits(model, p.accumulate, p.out)
    extra = {
        "declared": declared,
        "measured_bits_by_distance": {str(k): v for k, v in m["bits"].items()},
        "measured_narrowest": m.get("narrowest", "exact (over the probe range)"),
        "measured_rounding": m.get("rounding", "not measurable (exact)"),
        "required_bits": need,
    }
    raised = [f"{k}: {v}" for k, v in m["bits"].items() if str(v).startswith("raised")]
    problems = []
    if raised:
        problems.append("probes raised: " + "; ".join(raised[:2]))
    narrow = {k: v for k, v in m["bits"].items() if isinstance(v, int) and v < need}
    if narrow:
        problems.append(
            f"keeps {min(narrow.values())} fraction bits (at distances {sorted(narrow)[:6]}), "
            f"declared {need}"
        )
    rounding = m.get("rounding")
    wants_nearest = model is None or model.rounding == "nearest"
    if rounding is not None and wants_nearest and rounding != "round to nearest":
        problems.append(f"measured rounding {rounding!r}, declared round to nearest")
    if model is not None and model.promote_every and model.mantissa_bits < 23:
        unpromoted = [
            k
            for k, v in m["bits"].items()
            if k >= model.promote_every and isinstance(v, int) and v <= model.mantissa_bits
        ]
        if unpromoted:
            problems.append(
                f"declared promotion every {model.promote_every} elements, but distances "
                f"{unpromoted[:4]} keep only {model.mantissa_bits} bits or fewer"
            )
    summary = (
        f"measured: fraction bits kept {extra['measured_narrowest']}, rounding "
        f"{extra['measured_rounding']!r}; declared: {declared}"
    )
    if problems:
        return CaseResult(
            Verdict.FAILED,
            len(problems),
            0,
            detail="; ".join(problems) + f" | {summary}",
            extra=extra,
        )
    return CaseResult(Verdict.PASSED, 0, 0, detail=summary, extra=extra)


def accumulator_cases(env: Env) -> list[Case]:
    """The declared accumulator, and the declared fast accumulator where there is one."""
    caps = env.backend.capabilities
    no_gemm = None if caps.gemm_formats else "no GEMM declared"
    if no_gemm is None and ("tensorwise", "tensorwise") not in caps.gemm_granularities:
        no_gemm = "the probes need tensorwise GEMMs, not declared"
    cases = [
        Case(
            id="fingerprint/accumulator",
            kind="fingerprint",
            description="measured accumulator (bits by distance in K, rounding, promotion) "
            "against Capabilities.accumulator",
            run=partial(_run, fast=False),
            unsupported=no_gemm,
        )
    ]
    cases.append(
        Case(
            id="fingerprint/fast-accumulator",
            kind="fingerprint",
            description="the same probes with fast_accum=True against "
            "Capabilities.fast_accumulator",
            run=partial(_run, fast=True),
            unsupported=no_gemm
            or (None if caps.fast_accumulator is not None else "no fast accumulator declared"),
        )
    )
    return cases
