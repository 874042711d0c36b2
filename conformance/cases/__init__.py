"""The suite's cases, generated from a backend's declared capabilities."""

from __future__ import annotations

from collections import Counter

from ..model import Case, Env
from .accumulator import accumulator_cases
from .casts import amax_cases, cast_cases, dequant_block_cases, dequant_cases
from .gemm import gemm_cases
from .linear import linear_cases
from .quantize import quantize_cases
from .stochastic import stochastic_cases
from .transpose import transpose_cases

__all__ = ["generate_cases", "KINDS"]

#: Case kinds in the order they run.
KINDS = (
    "cast",
    "dequant",
    "amax",
    "quantize",
    "quantize_transpose",
    "stochastic",
    "gemm",
    "fingerprint",
    "linear",
)


def generate_cases(env: Env) -> list[Case]:
    """Every case of ``env.profile`` for ``env.backend`` (unsupported ones included)."""
    cases: list[Case] = []
    for make in (
        cast_cases,
        dequant_cases,
        dequant_block_cases,
        amax_cases,
        quantize_cases,
        transpose_cases,
        stochastic_cases,
        gemm_cases,
        accumulator_cases,
        linear_cases,
    ):
        cases += make(env)
    dup = [i for i, n in Counter(c.id for c in cases).items() if n > 1]
    if dup:
        raise RuntimeError(f"duplicate case ids: {sorted(dup)[:5]}")
    return cases
