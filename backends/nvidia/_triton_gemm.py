"""Scaled FP8 GEMMs as Triton kernels: tensorwise, rowwise x columnwise, 1x128 x 128x128.

``C = out_dtype(sum_k (qa ra)(qb rb) + bias + C_in)`` with dequantisation factors ``ra``,
``rb`` (fp32 reciprocals of the quantisation scales). The K loop runs in steps of
``BLOCK_K = 128``; each step's tensor-core dot product starts from zero and is then added
(scaled by the step's block scales, for 1x128 x 128x128) into an fp32 accumulator in
registers: the partial sums are promoted to fp32 every 128 elements of K (the DeepSeek-V3
recipe). Within a step the tensor cores accumulate as the hardware does (Hopper: about 14
significant bits, per the DeepSeek-V3 report), hence the declared accumulator model
:data:`portable_fp8.backends.nvidia.DEEPGEMM_PROMOTED_ACCUMULATOR`. Tensorwise and rowwise
scales are applied once, in the epilogue, to the fp32 sum. Bias and ``C_in`` are added in
fp32 and the result is rounded once to the output dtype.

In Triton's CPU interpreter the operands are decoded through the exact 256-entry tables of
:attr:`Format.code_values` and multiplied in fp32 (exact products, fp32 sums): the
interpreter's own FP8 conversion does not give NaN for E4M3FN's NaN code, and its FP8 dot
overflowed to NaN on E5M2 infinities that the exact sum keeps as inf.

A is read row-major (M, K) and B column-major (K, N), the layout Hopper's FP8 tensor-core
instructions take (both operands K-major); :func:`scaled_mm` copies an operand that is not.
"""

from __future__ import annotations

import torch

from portable_fp8.errors import Fp8TypeError
from portable_fp8.numerics.tensor import Fp8Tensor

from ._casts import decode_table as _decode_table
from ._triton_kernels import INTERPRET, tl, to_out_dtype, triton

__all__ = ["scaled_mm", "gemm_config", "TENSORWISE", "ROWWISE", "BLOCKWISE"]

TENSORWISE, ROWWISE, BLOCKWISE = 0, 1, 2
_BLOCK_K = 128


@triton.jit
def _scaled_mm_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    table_a_ptr,
    table_b_ptr,
    sa_ptr,
    sb_ptr,
    bias_ptr,
    cin_ptr,
    M,
    N,
    K,
    sam,
    sak,
    sbk,
    sbn,
    ssa_m,
    ssa_k,
    ssb_k,
    ssb_n,
    scin_m,
    scin_n,
    SCALE_MODE: tl.constexpr,
    DECODE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_CIN: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    group = GROUP_M * num_n
    first_m = (pid // group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + ((pid % group) % size_m)
    pid_n = (pid % group) // size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # Wrapped indices (rows/columns past the edge repeat earlier ones; their results are
    # masked at the store). No contiguity hints: the wrapped tail is not contiguous, and the
    # scale vectors indexed by them would be read with misaligned vector loads.
    rm = offs_m % M
    rn = offs_n % N
    a_ptrs = a_ptr + rm[:, None].to(tl.int64) * sam + offs_k[None, :] * sak
    b_ptrs = b_ptr + offs_k[:, None] * sbk + rn[None, :].to(tl.int64) * sbn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - kb * BLOCK_K
        if DECODE:  # uint8 codes through the exact decode tables (the interpreter's path)
            a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0)
            b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0)
            a = tl.where(offs_k[None, :] < k_left, tl.load(table_a_ptr + a.to(tl.int32)), 0.0)
            b = tl.where(offs_k[:, None] < k_left, tl.load(table_b_ptr + b.to(tl.int32)), 0.0)
        else:
            a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        if SCALE_MODE == 2:
            part = tl.dot(a, b)
            sa = tl.load(sa_ptr + rm * ssa_m + kb * ssa_k)
            sb = tl.load(sb_ptr + kb * ssb_k + (rn // 128) * ssb_n)
            acc += part * sa[:, None] * sb[None, :]
        else:
            acc = tl.dot(a, b, acc, max_num_imprecise_acc=BLOCK_K)
        a_ptrs += BLOCK_K * sak
        b_ptrs += BLOCK_K * sbk
    if SCALE_MODE == 0:
        acc = acc * (tl.load(sa_ptr) * tl.load(sb_ptr))
    elif SCALE_MODE == 1:
        sa = tl.load(sa_ptr + rm * ssa_m)
        sb = tl.load(sb_ptr + rn * ssb_n)
        acc = acc * sa[:, None] * sb[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn).to(tl.float32)[None, :]
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if HAS_CIN:
        cin = tl.load(
            cin_ptr + offs_m[:, None].to(tl.int64) * scin_m + offs_n[None, :] * scin_n,
            mask=mask,
            other=0.0,
        )
        acc += cin.to(tl.float32)
    c_ptrs = c_ptr + offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
    tl.store(c_ptrs, to_out_dtype(acc, c_ptr.dtype.element_ty), mask=mask)


def gemm_config(m: int, n: int, k: int, mode: int) -> dict:
    """Tile shape and pipelining for one problem (fixed heuristics; no autotuning)."""
    if INTERPRET:
        return {"BLOCK_M": 32, "BLOCK_N": 32, "GROUP_M": 4, "num_warps": 4, "num_stages": 1}
    if m <= 64:
        return {"BLOCK_M": 64, "BLOCK_N": 128, "GROUP_M": 8, "num_warps": 4, "num_stages": 4}
    # 128 x 128 tiles: the fp32 accumulator and the tensor cores' partial sum (promoted every
    # 128 of K) take 2 x 64 registers per thread with 8 warps; 128 x 256 tiles would spill.
    return {"BLOCK_M": 128, "BLOCK_N": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 4}


def _k_major(t: torch.Tensor, outer_dim: int) -> torch.Tensor:
    """``t`` with K (the dim other than ``outer_dim``) contiguous; copies if it is not."""
    k_dim = 1 - outer_dim
    if t.stride(k_dim) == 1 and t.stride(outer_dim) >= max(t.shape[k_dim], 1):
        return t
    return t.t().contiguous().t() if outer_dim == 1 else t.contiguous()


def scaled_mm(
    a: Fp8Tensor,
    b: Fp8Tensor,
    sa_inv: torch.Tensor,
    sb_inv: torch.Tensor,
    mode: int,
    *,
    out_dtype: torch.dtype,
    bias: torch.Tensor | None,
    c: torch.Tensor | None,
    config: dict | None = None,
) -> torch.Tensor:
    """Launch the Triton scaled GEMM; ``sa_inv``/``sb_inv`` are the dequantisation factors.

    Layouts of the factors: tensorwise 0-d; rowwise (M, 1) and (1, N); blockwise (M, K/128)
    and (K/128, N/128).
    """
    qa = _k_major(a.data, 0)
    qb = _k_major(b.data, 1)
    if INTERPRET:
        qa, qb = qa.view(torch.uint8), qb.view(torch.uint8)
        table_a = _decode_table(a.format, qa.device)
        table_b = _decode_table(b.format, qb.device)
    else:
        if qa.dtype == torch.uint8 or qb.dtype == torch.uint8:
            raise Fp8TypeError(
                f"the Triton GEMM takes codes of an FP8 dtype; got a: {qa.dtype}, b: {qb.dtype}"
            )
        table_a = table_b = sa_inv
    m, k = qa.shape
    n = qb.shape[1]
    out = torch.empty((m, n), dtype=out_dtype, device=qa.device)
    if m == 0 or n == 0:
        return out
    sa = sa_inv.to(torch.float32)
    sb = sb_inv.to(torch.float32)
    if mode == TENSORWISE:
        sa, sb = sa.reshape(1, 1), sb.reshape(1, 1)
    elif mode == ROWWISE:
        sa, sb = sa.reshape(m, 1), sb.reshape(1, n)
    cfg = dict(config or gemm_config(m, n, k, mode))
    bm, bn = cfg.pop("BLOCK_M"), cfg.pop("BLOCK_N")
    grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
    cin = c if c is not None else out
    _scaled_mm_kernel[grid](
        qa,
        qb,
        out,
        table_a,
        table_b,
        sa,
        sb,
        bias if bias is not None else out,
        cin,
        m,
        n,
        k,
        qa.stride(0),
        qa.stride(1),
        qb.stride(0),
        qb.stride(1),
        sa.stride(0),
        sa.stride(1),
        sb.stride(0),
        sb.stride(1),
        cin.stride(0),
        cin.stride(1),
        SCALE_MODE=mode,
        DECODE=INTERPRET,
        HAS_BIAS=bias is not None,
        HAS_CIN=c is not None,
        BLOCK_M=bm,
        BLOCK_N=bn,
        BLOCK_K=_BLOCK_K,
        **cfg,
    )
    return out
