"""The ``cuda`` backend: GEMMs through cuBLASLt, casts in Triton.

Tensorwise and rowwise GEMMs call torch's public ``torch.nn.functional.scaled_mm`` where the
installed torch has it, else ``torch._scaled_mm`` (``backends/_torch_scaled_mm.py``); 1x128 x
128x128 GEMMs call ``torch._scaled_mm``, the entry their scale layouts were verified through.

Layout handling for cuBLASLt (also stated in docs/nvidia.md): A is passed row-major and B
column-major; an operand in the other layout is copied once. K and N must be multiples of 16:
otherwise both operands are zero-padded along the short dimension (zero codes add exact
zeros) and the output is sliced back, which copies the operands. The scales are passed as
dequantisation factors ``fp32(1 / scale)``. Bias and ``C_in`` are added in fp32 to the fp32
product and rounded once to the output dtype (cuBLASLt is then asked for fp32 output).

1x128 x 128x128 GEMMs go to cuBLASLt where the installed torch and CUDA accept them (probed
once on a small problem and checked against the Triton kernel) and K is a multiple of 128
and N of 16, else to the Triton kernel (same declared accumulator); :meth:`describe` says
which path the probe chose. Accumulation: ``use_fast_accum=False`` (the declared
accumulator: Hopper tensor-core partial sums promoted to fp32 every 128 of K, which covers
both the cuBLASLt and the Triton paths), ``use_fast_accum=True`` for a GEMM asked for with
``fast_accum=True`` (the declared fast accumulator: about 14 bits, never promoted; blockwise
GEMMs keep their promotion, which the fast model's bound also covers), and for every GEMM
when ``PORTABLE_FP8_CUDA_FAST_ACCUM=1`` (then the declared accumulator is the fast one).
"""

from __future__ import annotations

import os
from dataclasses import replace

import torch
import torch.nn.functional as F

from portable_fp8.dispatch.backend import Backend
from portable_fp8.dispatch.hookspecs import hookimpl
from portable_fp8.errors import Fp8ValueError
from portable_fp8.numerics.granularity import TENSORWISE
from portable_fp8.numerics.tensor import Fp8Tensor

from .._torch_scaled_mm import has_public_scaled_mm, torch_scaled_mm
from ._base import GEMM_MODES, NvidiaBackend
from ._facts import HOPPER_FAST_ACCUMULATOR

__all__ = ["CudaBackend", "portable_fp8_backends"]

_TENSORWISE, _ROWWISE, _BLOCKWISE = 0, 1, 2
_ENTRY = "torch.nn.functional.scaled_mm" if has_public_scaled_mm() else "torch._scaled_mm"


def _pad_to(t: torch.Tensor, dim: int, multiple: int) -> torch.Tensor:
    extra = -t.shape[dim] % multiple
    if extra == 0:
        return t
    pad = [0, 0, 0, 0]
    pad[1 if dim == 1 else 3] = extra
    return F.pad(t.view(torch.uint8), pad).view(t.dtype)


class CudaBackend(NvidiaBackend):
    """cuBLASLt GEMMs via torch's scaled_mm; Triton casts."""

    name = "cuda"
    priority = 50

    def __init__(self) -> None:
        self.fast_accum = os.environ.get("PORTABLE_FP8_CUDA_FAST_ACCUM") == "1"
        super().__init__(
            e5m2_pair=False,
            notes=(
                f"GEMMs: cuBLASLt via {_ENTRY} (use_fast_accum="
                f"{self.fast_accum}); 1x128x128x128 via cuBLASLt where torch accepts it",
                "K and N padded to multiples of 16 (copies) where they are not",
                "casts: Triton kernels with integer round-to-nearest-even / stochastic rounding",
            ),
        )
        caps = self.capabilities
        self.capabilities = replace(
            caps,
            accumulator=HOPPER_FAST_ACCUMULATOR if self.fast_accum else caps.accumulator,
            fast_accumulator=HOPPER_FAST_ACCUMULATOR,
        )
        self._blockwise: str | None = None  # "cublas", "triton", or None (not probed yet)
        self._blockwise_error = ""

    def describe(self) -> dict:
        facts = super().describe()
        facts["gemm_path"] = f"{_ENTRY} (cuBLASLt) for tensorwise and rowwise"
        facts["use_fast_accum"] = self.fast_accum
        if self._blockwise is not None:
            facts["blockwise_path"] = self._blockwise
            if self._blockwise_error:
                facts["blockwise_cublas_error"] = self._blockwise_error
        return facts

    def scaled_mm(
        self,
        a: Fp8Tensor,
        b: Fp8Tensor,
        *,
        out_dtype: torch.dtype,
        bias: torch.Tensor | None,
        c: torch.Tensor | None,
        fast_accum: bool = False,
    ) -> torch.Tensor:
        fast = fast_accum or self.fast_accum
        sa, sb = a.scale_inv, b.scale_inv  # fp32(1 / scale), each in its own allocation
        direct = bias is None and c is None
        if direct and a.granularity is TENSORWISE and b.granularity is TENSORWISE:
            qa, qb = a.data, b.data
            k, n = qb.shape
            a_rows, a_cols = qa.stride()
            b_rows, b_cols = qb.stride()
            if (  # the common case (cuBLASLt's layouts, 0-d scales, no padding): nothing to do
                a_cols == 1
                and a_rows >= k
                and b_rows == 1
                and b_cols >= k
                and not (k % 16 or n % 16 or sa.dim() or sb.dim())
            ):
                return torch_scaled_mm(qa, qb, sa, sb, out_dtype=out_dtype, use_fast_accum=fast)
            return self._cublas(qa, qb, sa, sb, _TENSORWISE, out_dtype, fast)
        mode = GEMM_MODES[(a.granularity.name, b.granularity.name)]  # str keys hash fast
        if mode == _BLOCKWISE:
            k, n = a.shape[1], b.shape[1]
            out = None
            # cuBLASLt's 128x128 weight blocks must tile N exactly: with a partial last block
            # (N = 160 on an H200, torch 2.11) the columns past the last full block came out
            # wrong, so such shapes take the Triton kernel.
            if k % 128 == 0 and n % 128 == 0 and self._blockwise_path(a.device) == "cublas":
                try:
                    od = out_dtype if direct else torch.float32
                    out = self._cublas(a.data, b.data, sa, sb, mode, od, False)
                except (RuntimeError, Fp8ValueError) as exc:  # cuBLASLt rejects: Triton below
                    self._blockwise_error = f"{type(exc).__name__}: {str(exc)[:200]}"
            if out is None:
                from . import _triton_gemm

                bias = None if bias is None else bias.contiguous()
                return _triton_gemm.scaled_mm(
                    a, b, sa, sb, mode, out_dtype=out_dtype, bias=bias, c=c
                )
        else:
            od = out_dtype if direct else torch.float32
            out = self._cublas(a.data, b.data, sa, sb, mode, od, fast)
        if direct:
            return out
        if bias is not None:
            out = out + bias.to(torch.float32)
        if c is not None:
            out = out + c.to(torch.float32)
        return out.to(out_dtype)

    def _cublas(self, qa, qb, sa, sb, mode, out_dtype, fast: bool):
        """torch._scaled_mm in cuBLASLt's layouts (copies and padding as the module says);
        ``fast``: use_fast_accum (ignored for blockwise scaling, which keeps its promotion)."""
        m, k = qa.shape
        n = qb.shape[1]
        a_rows, a_cols = qa.stride()
        b_rows, b_cols = qb.stride()
        if a_cols != 1 or a_rows < k:
            qa = qa.contiguous()
        if b_rows != 1 or b_cols < k:
            qb = qb.t().contiguous().t()
        kpad, npad = -k % 16, -n % 16
        if mode == _TENSORWISE and not (kpad or npad):  # the common case, kept short
            if sa.dim() or sb.dim():
                sa, sb = sa.reshape(()), sb.reshape(())
            return torch_scaled_mm(qa, qb, sa, sb, out_dtype=out_dtype, use_fast_accum=fast)
        if kpad:
            qa = _pad_to(qa, 1, 16)
            qb = _pad_to(qb.t(), 1, 16).t()
        if npad:
            qb = _pad_to(qb.t(), 0, 16).t()
        if mode == _ROWWISE:
            if sa.shape != (m, 1):
                sa = sa.reshape(m, 1)
            if sb.shape != (1, n):
                sb = sb.reshape(1, n)
            if npad:
                sb = F.pad(sb, (0, npad), value=1.0)
        elif mode == _BLOCKWISE:
            sa = sa.t().contiguous().t()  # 1x128 scales outer-dim-major
            if kpad:
                raise Fp8ValueError(f"cuBLASLt blockwise needs K % 128 == 0, got K = {k}")
            sb = self._b_block_scale(sb)
        elif sa.dim() or sb.dim():
            sa, sb = sa.reshape(()), sb.reshape(())
        if mode == _BLOCKWISE:  # 1x128 x 128x128 scale layouts: verified through this entry
            out = torch._scaled_mm(qa, qb, sa, sb, out_dtype=out_dtype, use_fast_accum=False)
        else:
            out = torch_scaled_mm(qa, qb, sa, sb, out_dtype=out_dtype, use_fast_accum=fast)
        return out[:, :n] if npad else out

    _b_layout = "as_is"

    def _b_block_scale(self, sb: torch.Tensor) -> torch.Tensor:
        return sb.t().contiguous().t() if self._b_layout == "outer" else sb.contiguous()

    def _blockwise_path(self, device: torch.device) -> str:
        """cuBLASLt if this torch runs 1x128 x 128x128 correctly here (probed once)."""
        if self._blockwise is None:
            self._blockwise = self._probe_blockwise(device)
        return self._blockwise

    def _probe_blockwise(self, device: torch.device) -> str:
        from portable_fp8.numerics.granularity import BLOCK_1x128, BLOCK_128x128

        from . import _triton_gemm

        gen = torch.Generator(device=device).manual_seed(0)
        m, k, n = 256, 512, 384
        x = torch.randn(m, k, device=device, generator=gen)
        w = torch.randn(n, k, device=device, generator=gen)
        fmt = self._e4m3()
        a = self.quantize_dynamic(
            x, fmt, BLOCK_1x128, margin=0, power_of_two=False, saturate=True, rand_bits=None
        )
        bt = self.quantize_dynamic(
            w, fmt, BLOCK_128x128, margin=0, power_of_two=False, saturate=True, rand_bits=None
        )
        b = bt.t()
        sa, sb = a.scale_inv, b.scale_inv
        want = _triton_gemm.scaled_mm(
            a, b, sa, sb, _BLOCKWISE, out_dtype=torch.float32, bias=None, c=None
        )
        errors = []
        for layout in ("as_is", "outer"):
            self._b_layout = layout
            try:
                got = self._cublas(a.data, b.data, sa, sb, _BLOCKWISE, torch.float32, False)
            except Exception as exc:  # unsupported on this torch/CUDA/device
                errors.append(f"{layout}: {type(exc).__name__}: {str(exc)[:200]}")
                continue
            rel = (got - want).norm() / want.norm()
            if bool(rel < 1e-3):
                return "cublas"
            errors.append(f"{layout}: relative difference {float(rel):.3g} to the Triton GEMM")
        self._blockwise_error = "; ".join(errors)
        return "triton"

    @staticmethod
    def _e4m3():
        from portable_fp8.numerics.formats import E4M3FN

        return E4M3FN


@hookimpl
def portable_fp8_backends() -> list[Backend]:
    return [CudaBackend()]
