"""Numerics fingerprint of a backend's GEMM and cast: measured and reported; the
accumulator part is also judged against the declared model by the ``fingerprint`` cases
(:mod:`portable_fp8.conformance.cases.accumulator`).

Probes are built from FP8 values and go through the backend's ``scaled_mm`` (1 x K times
K x 1 problems padded to the declared dimension multiple), in the spirit of Fasi, Higham,
Mikaitis and Pranesh, "Numerical behavior of NVIDIA tensor cores", PeerJ Computer Science 7
(2021) e330: a large product ``P`` and a small one ``P * 2**-j`` are summed; the largest
``j`` for which the result is exact is the number of fraction bits the accumulator keeps.
Placing the small product at several distances from the large one separates an exact
multi-term adder (both products in one group), the accumulator itself, and promotion into a
wider accumulator every so many elements (both products in different promotion intervals).
Where the backend accumulates into C, ``C = -P`` leaves the small product as the exact
result, so the output type does not limit what can be measured.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from portable_fp8.errors import Fp8ValueError
from portable_fp8.numerics.cast import as_fp8_tensor, codes_of
from portable_fp8.numerics.formats import FORMATS, Format
from portable_fp8.numerics.granularity import TENSORWISE
from portable_fp8.numerics.tensor import Fp8Tensor

from .model import Env

__all__ = ["numerics_fingerprint", "measure_accumulator", "PROBE_POSITIONS"]

#: Positions (in K) of the small product relative to the large one at position 0.
PROBE_POSITIONS = (1, 8, 16, 31, 32, 64, 100, 127, 128, 200, 256, 511, 512, 1024)


def _code(fmt: Format, value: float) -> int:
    """The code of ``value`` in ``fmt`` (NaN and, where the format has them, infinities too)."""
    if value != value:
        return fmt.nan_code
    if math.isinf(value) and fmt.inf_code is not None:
        return fmt.inf_code | (fmt.sign_bit if value < 0 else 0)
    hits = (fmt.code_values == value).nonzero()
    if hits.numel() == 0:
        raise Fp8ValueError(f"value {value!r} is not a {fmt.name} value")
    return int(hits[0, 0])


class _Prober:
    """Runs dot products of exact FP8 values through the backend (fp32 output)."""

    def __init__(
        self, env: Env, prefer: tuple[str, str] = ("e4m3fn", "e4m3fn"), fast: bool = False
    ) -> None:
        caps = env.backend.capabilities
        #: Probe the fast accumulator (pass fast_accum=True, as the op layer does).
        self.fast = caps.runs_fast_accumulator(fast)
        pairs = sorted(caps.gemm_formats)
        pair = prefer if prefer in pairs else pairs[0]
        self.env = env
        self.fa, self.fb = FORMATS[pair[0]], FORMATS[pair[1]]
        self.mult = max(caps.gemm_dim_multiple, 1)
        self.out = (
            torch.float32
            if torch.float32 in caps.out_dtypes
            else sorted(caps.out_dtypes, key=str)[0]
        )
        device, tw = env.device.type, "tensorwise"
        self.tensorwise = caps.why_not_gemm(device, *pair, tw, tw, self.out) is None
        self.accumulate = caps.why_not_gemm(device, *pair, tw, tw, self.out, c=True) is None

    def _pad(self, n: int) -> int:
        return -(-max(n, 1) // self.mult) * self.mult

    def dot_rows(
        self,
        a_rows: list[list[float]],
        b_cols: list[list[float]],
        a_inv: float = 1.0,
        b_inv: float = 1.0,
        c: float | None = None,
    ) -> torch.Tensor:
        """A (rows) @ B (columns) of exact FP8 values with tensorwise dequant factors."""
        k = self._pad(max(len(r) for r in a_rows + b_cols))
        n = self._pad(len(b_cols))
        m = len(a_rows)
        a = torch.zeros(m, k, dtype=torch.uint8)
        b = torch.zeros(k, n, dtype=torch.uint8)
        for i, row in enumerate(a_rows):
            for j, v in enumerate(row):
                a[i, j] = _code(self.fa, v)
        for j, col in enumerate(b_cols):
            for i, v in enumerate(col):
                b[i, j] = _code(self.fb, v)
        dev = self.env.to_device
        qa = Fp8Tensor(
            dev(as_fp8_tensor(a, self.fa)), dev(torch.tensor(1.0 / a_inv)), self.fa, TENSORWISE
        )
        qb = Fp8Tensor(
            dev(as_fp8_tensor(b, self.fb)), dev(torch.tensor(1.0 / b_inv)), self.fb, TENSORWISE
        )
        c_in = None if c is None else dev(torch.full((m, n), c, dtype=self.out))
        kw = {"fast_accum": True} if self.fast else {}
        out = self.env.backend.scaled_mm(qa, qb, out_dtype=self.out, bias=None, c=c_in, **kw)
        return out.cpu().double()[:, : len(b_cols)]


def _pow2_values(fmt: Format) -> list[float]:
    v = fmt.code_values
    vals = v[torch.isfinite(v) & (v > 0)]
    return sorted({float(x) for x in vals if math.frexp(float(x))[0] == 0.5})


def _bits_kept(p: _Prober, position: int) -> int | str:
    """Largest j with P + P 2**-j exact when the small product sits ``position`` after P.

    Where the backend declares accumulation into C, ``C = -P``: the result is then the
    accumulated ``P + s`` minus ``P``, exact in the output, so the output type does not cap the
    measurement (unless the backend rounds the sum to the output type before adding C).
    """
    pa, pb = _pow2_values(p.fa), _pow2_values(p.fb)
    big_a, big_b = pa[-1], pb[-1]
    big = big_a * big_b
    # Every small product 2**e reachable as (power of two of A) x (power of two of B).
    smalls: dict[int, tuple[float, float]] = {}
    for x in pa:
        for y in pb:
            j = round(math.log2(big / (x * y)))
            if j >= 1 and j not in smalls:
                smalls[j] = (x, y)
    js = sorted(smalls)
    # Group the probes by B's small value (one column each); rows vary A's small value.
    cols: dict[float, list[int]] = {}
    for j in js:
        cols.setdefault(smalls[j][1], []).append(j)
    exact_j: dict[int, bool] = {}
    for yb, jlist in cols.items():
        a_rows = []
        for j in jlist:
            row = [0.0] * (position + 1)
            row[0], row[position] = big_a, smalls[j][0]
            a_rows.append(row)
        col = [0.0] * (position + 1)
        col[0], col[position] = big_b, yb
        got = p.dot_rows(a_rows, [col], c=-big if p.accumulate else None)[:, 0]
        for j, g in zip(jlist, got.tolist(), strict=True):
            want = big * 2.0**-j if p.accumulate else big + big * 2.0**-j
            exact_j[j] = g == want
    kept = 0
    for j in sorted(exact_j):
        if not exact_j[j]:
            break
        kept = j
    top = max(exact_j)
    return kept if kept < top else f"at least {top} (exact over the whole probe range)"


def _rounding(p: _Prober, bits: int, position: int) -> str:
    """Add 3/4 of an accumulator ulp to P (and to -P): nearest rounds away, truncation not."""
    pa, pb = _pow2_values(p.fa), _pow2_values(p.fb)
    big_a, big_b = pa[-1], pb[-1]
    big = big_a * big_b
    target = big * 2.0**-bits * 0.75  # 3 * 2**e: 1.5 * 2**(e+1) as (1.5 x) * y
    for y in pb:
        x = target / y
        if (p.fa.code_values == x).any():
            break
    else:
        return "not measurable with these formats"
    outcomes = []
    for sign in (1.0, -1.0):
        row = [0.0] * (position + 1)
        row[0], row[position] = sign * big_a, sign * x
        col = [0.0] * (position + 1)
        col[0], col[position] = big_b, y
        offset = -sign * big if p.accumulate else 0.0
        got = float(p.dot_rows([row], [col], c=offset if p.accumulate else None)[0, 0])
        up = sign * (big + big * 2.0**-bits) + offset
        if got == up:
            outcomes.append("nearest")
        elif got == sign * big + offset:
            outcomes.append("toward zero")
        else:
            outcomes.append(f"other ({got!r})")
    if outcomes == ["nearest", "nearest"]:
        return "round to nearest"
    if outcomes == ["toward zero", "toward zero"]:
        return "truncation (toward zero)"
    return f"+P: {outcomes[0]}, -P: {outcomes[1]}"


def _subnormals(p: _Prober) -> dict[str, str]:
    out = {}
    sub_a = p.fa.min_subnormal
    got = float(p.dot_rows([[sub_a]], [[1.0]])[0, 0])
    out["fp8 subnormal input"] = (
        "kept" if got == sub_a else ("flushed to zero" if got == 0 else f"other: {got!r}")
    )
    # Output in fp32's subnormal range: 2**-130 = min_subnormal(A) * dequant factor.
    inv = 2.0**-130 / sub_a
    got = float(p.dot_rows([[sub_a]], [[1.0]], a_inv=inv)[0, 0])
    out["fp32 subnormal output (2^-130)"] = (
        "kept" if got == 2.0**-130 else ("flushed to zero" if got == 0 else f"other: {got!r}")
    )
    return out


def _specials(p: _Prober) -> dict[str, str]:
    nan, inf = float("nan"), float("inf")
    probes = {"NaN x 1": ([nan, 1.0], [1.0, 1.0])}
    if p.fa.has_inf:
        probes["inf x 1"] = ([inf, 1.0], [1.0, 1.0])
        probes["inf x 0"] = ([inf, 1.0], [0.0, 1.0])
        probes["inf + -inf"] = ([inf, -inf], [1.0, 1.0])
    out = {}
    for name, (row, col) in probes.items():
        try:
            out[name] = repr(float(p.dot_rows([row], [col])[0, 0]))
        except Exception as exc:
            out[name] = f"raised {type(exc).__name__}: {exc}"
    return out


def _cast_overflow(env: Env) -> dict[str, str]:
    caps = env.backend.capabilities
    out = {}
    x = torch.tensor([1e6, -1e6, float("inf"), float("-inf"), float("nan")])
    for name in ("e4m3fn", "e5m2", "e4m3fnuz", "e4m3_gaudi2"):
        fmt = FORMATS[name]
        for saturate in (True, False):
            if caps.why_not_cast(env.device.type, fmt, saturate=saturate) is not None:
                continue
            try:
                q = env.backend.cast_to_fp8(
                    env.to_device(x),
                    fmt,
                    env.to_device(torch.tensor(1.0)),
                    TENSORWISE,
                    saturate=saturate,
                    rand_bits=None,
                )
                vals = fmt.code_values[codes_of(q.cpu()).to(torch.int64)].tolist()
                shown = ", ".join(f"{v:g}" for v in vals)
            except Exception as exc:
                shown = f"raised {type(exc).__name__}"
            out[f"{name} saturate={saturate}: 1e6, -1e6, inf, -inf, nan ->"] = shown
    return out


def measure_accumulator(env: Env, fast: bool = False) -> dict[str, Any]:
    """The accumulator as measured: fraction bits kept by distance, the narrowest and where,
    its rounding there, and the distances at which accumulation is wider (promotion).

    ``bits`` maps each of :data:`PROBE_POSITIONS` to an int, or a string where the sum was
    exact over the whole probe range (or the probe raised). Raises where no probe can run.
    """
    p = _Prober(env, fast=fast)
    if not p.tensorwise or not env.backend.capabilities.gemm_formats:
        raise Fp8ValueError("the probes need tensorwise GEMMs")
    bits: dict[int, Any] = {}
    for pos in PROBE_POSITIONS:
        try:
            bits[pos] = _bits_kept(p, pos)
        except Exception as exc:
            bits[pos] = f"raised {type(exc).__name__}: {exc}"
    out: dict[str, Any] = {"prober": p, "bits": bits}
    numeric = {k: v for k, v in bits.items() if isinstance(v, int)}
    if numeric:
        narrowest = min(numeric.values())
        at = min(k for k, v in numeric.items() if v == narrowest)
        out["narrowest"], out["at"] = narrowest, at
        try:
            out["rounding"] = _rounding(p, narrowest, at)
        except Exception as exc:
            out["rounding"] = f"raised {type(exc).__name__}: {exc}"
        out["wider_from"] = [k for k, v in numeric.items() if v > narrowest and k > at]
    return out


def numerics_fingerprint(env: Env) -> dict[str, Any]:
    """The measured behaviour (see the module docstring); errors are reported, not raised."""
    fp: dict[str, Any] = {}
    try:
        p = _Prober(env)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    if not p.tensorwise or not p.env.backend.capabilities.gemm_formats:
        fp["gemm"] = "not measured: the probes need tensorwise GEMMs"
    else:
        fp["probe formats"] = f"{p.fa.name} x {p.fb.name}, out {p.out}"
        m = measure_accumulator(env)
        bits = m["bits"]
        fp["accumulator fraction bits by distance"] = {str(k): v for k, v in bits.items()}
        numeric = {k: v for k, v in bits.items() if isinstance(v, int)}
        if numeric:
            far = max(numeric)
            fp["effective accumulator precision (fraction bits)"] = m["narrowest"]
            fp["accumulator rounding"] = m["rounding"]
            wider = m["wider_from"]
            fp["promotion interval"] = (
                f"wider accumulation from distance {min(wider)} on (promotion every "
                f"~{min(wider)} elements of K or fewer)"
                if wider
                else f"not detected up to K={far + 1}"
            )
        try:
            fp["subnormals"] = _subnormals(p)
        except Exception as exc:
            fp["subnormals"] = f"raised {type(exc).__name__}: {exc}"
        pairs = sorted(env.backend.capabilities.gemm_formats)
        inf_pairs = [q for q in pairs if FORMATS[q[0]].has_inf]
        prefer = ("e5m2", "e5m2") if ("e5m2", "e5m2") in inf_pairs else (inf_pairs or [None])[0]
        special = _Prober(env, prefer) if prefer else p
        fp["GEMM NaN/inf propagation"] = {
            "formats": f"{special.fa.name} x {special.fb.name}",
            **_specials(special),
        }
    fp["cast overflow"] = _cast_overflow(env)
    return fp
