"""Reference scaled GEMM and the error bound every backend's GEMM is judged by.

Contract. For FP8 codes ``qa`` (M x K) and ``qb`` (K x N) with quantisation scales ``sa``,
``sb`` (one per block of their granularity), the dequantisation factors are the fp32
reciprocals ``ra = fp32(1 / sa)``, ``rb = fp32(1 / sb)`` (what every backend receives at
its boundary), and

    C = out_dtype( sum_k (qa[m,k] ra[m,k]) (qb[k,n] rb[k,n]) + bias[n] + C_in[m,n] )

Products of FP8 values are exact in any binary format with >= 2(m+1) significand bits.

Default (exact) mode: within each K-block on which both scales are constant, the sum of
code products is computed in float64 and is exact as long as every partial sum fits 53 bits:
the products of two E4M3FN codes are integers times 2**-18 of magnitude <= 448**2 < 2**18,
so sums of up to 2**17 = 131072 products are exact (any order). For E5M2 operands the
products span 2**-32 .. 2**31.8, which does not fit 53 bits in general: the sum is then
exact only when the data's dynamic range is narrower (normal LLM data is), and otherwise
carries one float64 rounding per addition (relative 2**-53, far below any output format).
Block sums are then multiplied by their scales and added in float64 (a few 2**-53 relative
roundings), and the result rounded to the output dtype (via fp32 for bf16/fp16 outputs: a
second rounding of at most 2**-24 relative, stated in :func:`gemm_error_bound`).

Narrow-accumulator mode (:class:`AccumulatorModel`): models a hardware accumulator that keeps
``mantissa_bits`` bits after the leading one, adds ``group`` products at a time (summed
exactly, as a tensor-core dot product does) and rounds (to nearest even or by truncation)
after each addition; every ``promote_every`` elements of K (and at each change of block
scale), the partial sum is scaled and added into an fp32 accumulator (the DeepSeek-V3
promotion strategy). Vendors' instances (e.g. NVIDIA's, in
``portable_fp8.backends.nvidia``) live with their backends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from .cast import codes_of, codes_to_float
from .formats import Format
from .granularity import Granularity, as_2d_shape
from .scaling import reciprocal

__all__ = [
    "AccumulatorModel",
    "FP32_ACCUMULATOR",
    "reference_scaled_mm",
    "gemm_error_bound",
    "unit_roundoff",
]


@dataclass(frozen=True)
class AccumulatorModel:
    """A model of a GEMM accumulator (see the module docstring)."""

    mantissa_bits: int
    rounding: Literal["nearest", "truncate"] = "nearest"
    group: int = 1
    promote_every: int | None = None

    @property
    def unit_roundoff(self) -> float:
        """Relative error of one accumulator rounding: 2**-p (nearest) or 2**-(p-1) (truncate),
        with p = mantissa_bits + 1 significant bits."""
        p = self.mantissa_bits + 1
        return 2.0**-p if self.rounding == "nearest" else 2.0 ** -(p - 1)


#: IEEE fp32 accumulation, one product at a time (the usual CPU/GPU path).
FP32_ACCUMULATOR = AccumulatorModel(23, "nearest", 1)


def unit_roundoff(dtype: torch.dtype) -> float:
    """Unit roundoff (half an ulp at 1) of a floating-point output dtype."""
    return torch.finfo(dtype).eps / 2


def _pow2(e: torch.Tensor) -> torch.Tensor:
    """Exact float64 ``2**e`` for integer ``e`` in [-1022, 1023]."""
    return ((e.to(torch.int64) + 1023) << 52).view(torch.float64)


def _round_significand_(x: torch.Tensor, model: AccumulatorModel) -> torch.Tensor:
    """Round float64 ``x`` in place to ``model.mantissa_bits + 1`` significant bits.

    Works on the IEEE bit patterns: dropping the low ``52 - mantissa_bits`` bits truncates
    the magnitude; adding ``half - 1 + lsb`` first rounds it to nearest, ties to even (a
    carry out of the mantissa moves into the exponent, as it should). The sign bit is never
    touched, so rounding is symmetric, like trunc/round of the scaled significand. Exact for
    normal float64 values (the sums of FP8 products here never reach float64 subnormals);
    inf stays inf and NaN stays NaN (the quiet bit is kept for mantissa_bits >= 1).
    """
    drop = 52 - model.mantissa_bits
    if drop <= 0:
        return x
    if drop >= 52:  # a 1-bit significand: the bit trick would clear NaN payloads
        mant, exp = torch.frexp(x)
        scaled = torch.trunc(mant * 2) if model.rounding == "truncate" else torch.round(mant * 2)
        return x.copy_(scaled * _pow2(exp.to(torch.int64) - 1))
    bits = x.view(torch.int64)
    if model.rounding != "truncate":
        bits.add_(((bits >> drop) & 1) + ((1 << (drop - 1)) - 1))
    bits.bitwise_and_(~((1 << drop) - 1))
    return x


def _k_segments(
    k: int, a_gran: Granularity, b_gran: Granularity, a_shape, b_shape, step: int | None
) -> list[tuple[int, int]]:
    """Split [0, K) where either operand's scale changes (and every ``step`` elements)."""
    cuts = {0, k}
    for size in (a_gran.block(a_shape)[1], b_gran.block(b_shape)[0], step):
        if size and size > 0:
            cuts.update(range(0, k, size))
    edges = sorted(cuts)
    return list(zip(edges[:-1], edges[1:], strict=False))


def reference_scaled_mm(
    qa: torch.Tensor,
    qb: torch.Tensor,
    a_format: Format,
    b_format: Format,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    a_granularity: Granularity,
    b_granularity: Granularity,
    *,
    out_dtype: torch.dtype = torch.float32,
    bias: torch.Tensor | None = None,
    c: torch.Tensor | None = None,
    accumulator: AccumulatorModel | None = None,
    a_global_scale: torch.Tensor | None = None,
    b_global_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """C = out_dtype(sum (qa ra)(qb rb) + bias + c), per the module's contract.

    ``qa`` is (M, K) and ``qb`` is (K, N), FP8 (or uint8 code) tensors of any strides; the
    scales are quantisation scales in their granularity's layout; ``accumulator=None`` gives
    the exact sum. ``a_global_scale`` / ``b_global_scale``: optional per-tensor fp32 second
    scale levels (0-d); the accumulated sum is multiplied by their reciprocals
    ``fp32(1 / g)`` in float64 (each product of an fp32 factor: one float64 rounding,
    2**-53 relative) before bias and ``c`` are added.
    """
    a = codes_to_float(codes_of(qa), a_format).double()
    b = codes_to_float(codes_of(qb), b_format).double()
    m, k = a.shape
    n = b.shape[1]
    a_shape, b_shape = (m, k), (k, n)
    # .expand: tensorwise scales come back as (1, 1); the K-slices below need full shapes.
    ra = a_granularity.expand(reciprocal(a_scale).double(), a_shape).expand(a_shape)
    rb = b_granularity.expand(reciprocal(b_scale).double(), b_shape).expand(b_shape)
    step = None if accumulator is None else accumulator.promote_every
    total = torch.zeros(m, n, dtype=torch.float64)
    for lo, hi in _k_segments(k, a_granularity, b_granularity, a_shape, b_shape, step):
        if accumulator is None:
            partial = a[:, lo:hi] @ b[lo:hi, :]
        else:
            partial = _narrow_sum(a[:, lo:hi], b[lo:hi, :], accumulator)
        scaled = partial * ra[:, lo : lo + 1] * rb[lo : lo + 1, :]
        if accumulator is None:
            total += scaled
        else:  # promotion: the scaled partial sum joins an fp32 accumulator
            total = (total + scaled.float().double()).float().double()
    for g in (a_global_scale, b_global_scale):
        if g is not None:
            total = total * reciprocal(g).double().reshape(())
    if bias is not None:
        total = total + bias.double().reshape(1, -1)
    if c is not None:
        total = total + c.double()
    return total.to(torch.float32).to(out_dtype)


def _narrow_sum(a: torch.Tensor, b: torch.Tensor, model: AccumulatorModel) -> torch.Tensor:
    """Sum over K with a narrow accumulator: groups of products exact, then one rounding."""
    acc = torch.zeros(a.shape[0], b.shape[1], dtype=torch.float64)
    g = max(model.group, 1)
    for lo in range(0, a.shape[1], g):
        if g == 1:  # acc + a b: the product is exact, so one float64 rounding, in place
            acc.addcmul_(a[:, lo : lo + 1], b[lo : lo + 1, :])
        else:
            acc.add_(a[:, lo : lo + g] @ b[lo : lo + g, :])
        _round_significand_(acc, model)
    return acc


def _gamma(n: int, u: float) -> float:
    """Higham's ``gamma_n = n u / (1 - n u)`` (infinite once ``n u >= 1``)."""
    return math.inf if n * u >= 1 else n * u / (1 - n * u)


def gemm_error_bound(
    abs_products: torch.Tensor,
    k: int,
    *,
    accumulator: AccumulatorModel | None,
    out_dtype: torch.dtype,
    exact: torch.Tensor,
    addends: torch.Tensor | None = None,
) -> torch.Tensor:
    """Elementwise bound on |C_backend - C_exact| for a backend with the given accumulator.

    Derivation. Products of FP8 values and the scalings by powers of two are exact; what
    remains are the accumulator's roundings. Summing K terms in any order (sequentially, in
    blocks, pairwise) with a unit roundoff ``u`` per addition gives, by the standard
    floating-point summation bound (Higham, *Accuracy and Stability of Numerical Algorithms*,
    2nd ed., section 4.2), ``|S_hat - S| <= gamma_{K-1} * sum |a_k b_k|`` with
    ``gamma_n = n u / (1 - n u)``. Applying the two dequantisation factors, adding bias and C_in,
    and promotion into fp32 add a few more roundings, each at most ``u`` (or fp32's
    ``2**-24``), so we use ``gamma_{K+4}`` over ``sum |a||b| + |bias| + |C_in|``
    (``abs_products`` must already include the dequantisation factors, and ``addends`` the
    magnitudes of bias and C_in). The result is then rounded to ``out_dtype``: at most
    ``u_out |C|`` (twice, for bf16/fp16 reached via fp32), plus half the smallest subnormal
    of ``out_dtype`` for results in its subnormal range.

    With promotion (``accumulator.promote_every = B``), each block of at most ``B`` products
    is summed in the narrow accumulator (error at most ``gamma_B(u)`` times its magnitudes)
    and the ``ceil(K / B)`` block sums are added in fp32 together with the few roundings
    above, so the factor is ``gamma_B(u) + gamma_{ceil(K/B)+4}(2**-24) (1 + gamma_B(u))``:
    finite for any K, where ``gamma_{K+4}(u)`` is infinite once ``K u >= 1``.
    """
    u = accumulator.unit_roundoff if accumulator is not None else 2.0**-24
    block = accumulator.promote_every if accumulator is not None else None
    if block and block < k:
        inner = _gamma(block, u)
        gamma = inner + _gamma(-(-k // block) + 4, 2.0**-24) * (1 + inner)
    else:
        gamma = _gamma(k + 4, u)
    total_abs = abs_products if addends is None else abs_products + addends
    u_out = unit_roundoff(out_dtype)
    roundings = 1 if out_dtype == torch.float32 else 2
    tiny = torch.finfo(out_dtype).smallest_normal * torch.finfo(out_dtype).eps
    return gamma * total_abs + roundings * u_out * exact.abs() * (1 + gamma) + tiny


def abs_product_sum(
    qa: torch.Tensor,
    qb: torch.Tensor,
    a_format: Format,
    b_format: Format,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    a_granularity: Granularity,
    b_granularity: Granularity,
) -> torch.Tensor:
    """``sum_k |qa ra| |qb rb|`` in float64: the magnitude term of :func:`gemm_error_bound`."""
    a = codes_to_float(codes_of(qa), a_format).double().abs()
    b = codes_to_float(codes_of(qb), b_format).double().abs()
    ra = a_granularity.expand(reciprocal(a_scale).double(), as_2d_shape(a.shape))
    rb = b_granularity.expand(reciprocal(b_scale).double(), as_2d_shape(b.shape))
    return torch.nan_to_num(a * ra.abs(), nan=0.0) @ torch.nan_to_num(b * rb.abs(), nan=0.0)
