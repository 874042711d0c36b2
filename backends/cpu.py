"""The ``cpu`` backend: PyTorch's native CPU kernels (oneDNN), held to the contract.

Casts use torch's own ``.to(float8_*)`` and then correct the elements where torch's cast is
known to differ between versions or from the contract: overflow and non-finite inputs
(torch 2.13 saturates them, torch 2.11 returns NaN; the contract decides by ``saturate``),
Gaudi2's 240 limit (a range torch does not know) and E8M0 (whose torch cast maps zero and
negatives differently). Stochastic rounding uses the shared integer implementation.

GEMMs use torch's scaled matrix product (oneDNN; ``torch.nn.functional.scaled_mm``, or
``torch._scaled_mm`` on older torch) for tensorwise and rowwise scaling of E4M3FN/E5M2
operands where the installed torch has a CPU kernel for it; everything else (block and MX
scaling, FNUZ formats) dequantises each operand to fp32 (one rounding per element, exact for
power-of-two scales) and multiplies in fp32. Both accumulate in fp32.

With intel-extension-for-pytorch importable (optional; its last release, 2.8, pins torch
2.8), tensorwise round-to-nearest saturating casts of E4M3FN/E5M2 use its
``torch.ops.torch_ipex.cast_to_fp8`` / ``cast_from_fp8`` (bit-identical to the contract on
every bf16 and fp16 pattern and 2**20 random fp32 values, measured with IPEX 2.8.0), and
tensorwise GEMMs use ``torch.ops.torch_ipex.fp8_linear`` where oneDNN reports FP8 support
(``onednn_has_fp8_support()``: CPUs with AVX512-FP16/AMX-FP16). Everything else takes the
native path. ``describe()`` says which path runs; ``PORTABLE_FP8_CPU_IPEX=0`` turns it off.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from functools import cached_property

import torch

from portable_fp8.dispatch.backend import Backend, Capabilities
from portable_fp8.dispatch.hookspecs import hookimpl
from portable_fp8.numerics.cast import as_fp8_tensor, codes_of, round_to_codes
from portable_fp8.numerics.formats import FORMATS, Format, element_formats
from portable_fp8.numerics.gemm import FP32_ACCUMULATOR
from portable_fp8.numerics.granularity import GRANULARITIES, Granularity
from portable_fp8.numerics.scaling import reciprocal
from portable_fp8.numerics.tensor import Fp8Tensor

from ._torch_scaled_mm import torch_scaled_mm

__all__ = ["CpuBackend", "probe_scaled_mm", "portable_fp8_backends"]

_SCALED_MM_FORMATS = ("e4m3fn", "e5m2", "e4m3_gaudi2")
_IPEX_FORMATS = {"e4m3fn": "kFloat8_E4M3", "e5m2": "kFloat8_E5M2"}
_IPEX_ENV = "PORTABLE_FP8_CPU_IPEX"


def probe_scaled_mm(device: str) -> frozenset[tuple[str, str]]:
    """Which of tensorwise and rowwise scaling torch's scaled_mm runs on ``device``.

    torch 2.8's CPU kernel takes tensorwise scales only (rowwise fails an internal assert);
    later versions take both. Probed on one 16x16 product each.
    """
    pairs = set()
    a = torch.ones(16, 16, dtype=torch.float8_e4m3fn, device=device)
    for pair, shapes in (
        (("tensorwise", "tensorwise"), ((), ())),
        (("rowwise", "columnwise"), ((16, 1), (1, 16))),
    ):
        try:
            sa, sb = (torch.ones(shape, dtype=torch.float32, device=device) for shape in shapes)
            torch_scaled_mm(a, a.t(), sa, sb, out_dtype=torch.float32)
            pairs.add(pair)
        except Exception:
            continue
    return frozenset(pairs)


class _Ipex:
    """intel-extension-for-pytorch's FP8 ops, if importable (imported lazily, once)."""

    def __init__(self) -> None:
        self.module = None
        self.error: str | None = None
        self.gemm = False
        if os.environ.get(_IPEX_ENV, "1") == "0":
            self.error = f"disabled by {_IPEX_ENV}=0"
            return
        if importlib.util.find_spec("intel_extension_for_pytorch") is None:
            self.error = "intel-extension-for-pytorch is not installed"
            return
        try:
            self.module = importlib.import_module("intel_extension_for_pytorch")
            isa = importlib.import_module("intel_extension_for_pytorch._isa_help")
            self.otype = {k: int(getattr(isa.Float8Format, v)) for k, v in _IPEX_FORMATS.items()}
            torch.ops.torch_ipex.cast_to_fp8  # noqa: B018 (raises if the op is missing)
        except Exception as exc:  # a broken or mismatched extension must not break the backend
            self.module, self.error = None, f"importing intel-extension-for-pytorch failed: {exc}"
            return
        try:
            self.gemm = bool(self.module._C.onednn_has_fp8_support())
        except Exception:
            self.gemm = False

    @property
    def version(self) -> str | None:
        return None if self.module is None else str(self.module.__version__)

    def cast_to(self, x: torch.Tensor, fmt: Format, scale: torch.Tensor) -> torch.Tensor:
        s = scale.reshape(1)
        amax = torch.zeros(1, dtype=torch.float32)  # the op records amax there; unused
        otype = self.otype[fmt.name]
        return torch.ops.torch_ipex.cast_to_fp8(x, s, amax, reciprocal(s), 0, otype)

    def cast_from(self, q, fmt: Format, scale_inv: torch.Tensor, out_dtype) -> torch.Tensor:
        otype = self.otype[fmt.name]
        return torch.ops.torch_ipex.cast_from_fp8(q, scale_inv.reshape(1), 0, otype, out_dtype)

    def linear(self, a: Fp8Tensor, b: Fp8Tensor) -> torch.Tensor:
        """fp32 ``a @ b`` via fp8_linear, which computes ``A @ W.T`` for a weight W (N, K)."""
        out = torch.empty(a.shape[0], b.shape[1], dtype=torch.float32)
        torch.ops.torch_ipex.fp8_linear(
            a.data.contiguous(),
            a.scale_inv.reshape(1),
            0,
            self.otype[a.format.name],
            b.data.t().contiguous(),
            b.scale_inv.reshape(1),
            0,
            self.otype[b.format.name],
            None,
            out,
        )
        return out


class CpuBackend(Backend):
    """PyTorch's CPU kernels, with contract corrections where torch's cast differs."""

    name = "cpu"
    priority = 10

    def __init__(self) -> None:
        names = [f.name for f in element_formats()]
        self.capabilities = Capabilities(
            devices=frozenset({"cpu"}),
            cast_formats=frozenset(FORMATS),
            gemm_formats=frozenset((a, b) for a in names for b in names),
            granularities=frozenset(GRANULARITIES),
            accumulator=FP32_ACCUMULATOR,
            notes=("fp32 accumulation (oneDNN or torch fp32 matmul)",),
        )

    @cached_property
    def _ipex(self) -> _Ipex:
        return _Ipex()

    def _ipex_cast(self, t: torch.Tensor, fmt: Format, granularity: Granularity) -> bool:
        """Whether a cast of ``t`` takes the IPEX path (CPU, tensorwise, E4M3FN/E5M2)."""
        return (
            t.device.type == "cpu"
            and granularity.is_tensorwise
            and fmt.name in _IPEX_FORMATS
            and self._ipex.module is not None
        )

    @cached_property
    def _scaled_mm_pairs(self) -> frozenset[tuple[str, str]]:
        """The granularity pairs this torch's CPU torch._scaled_mm runs (probed once)."""
        return probe_scaled_mm("cpu")

    @property
    def _has_scaled_mm(self) -> bool:
        return bool(self._scaled_mm_pairs)

    def describe(self) -> dict:
        ipex = self._ipex
        pairs = "/".join(sorted(a for a, _ in self._scaled_mm_pairs))
        gemm = (
            f"torch._scaled_mm (oneDNN) for {pairs} E4M3FN/E5M2, "
            "else fp32 matmul of dequantised operands"
            if self._has_scaled_mm
            else "fp32 matmul of dequantised operands (no CPU torch._scaled_mm in this torch)"
        )
        cast = "torch .to(float8) with contract corrections"
        if ipex.module is not None:
            cast = (
                "torch_ipex::cast_to_fp8/cast_from_fp8 for tensorwise nearest saturating "
                f"E4M3FN/E5M2; else {cast}"
            )
            if ipex.gemm:
                gemm = f"torch_ipex::fp8_linear for tensorwise E4M3FN/E5M2; else {gemm}"
            else:
                gemm += " (IPEX fp8_linear unused: oneDNN reports no FP8 support on this CPU)"
        return {
            "torch": torch.__version__,
            "ipex": ipex.version or f"not used ({ipex.error})",
            "gemm_path": gemm,
            "cast_path": cast,
        }

    # -- casts -------------------------------------------------------------------------------

    def cast_to_fp8(self, x, fmt: Format, scale, granularity, *, saturate, rand_bits):
        if saturate and rand_bits is None and self._ipex_cast(x, fmt, granularity):
            return self._ipex.cast_to(x, fmt, scale)
        y = x.to(torch.float32) * granularity.per_element(scale, x.shape)
        dtype = fmt.torch_dtype
        if rand_bits is not None or fmt.exponent_only or dtype == torch.uint8:
            codes = round_to_codes(y, fmt, saturate=saturate, rand_bits=rand_bits)
            return as_fp8_tensor(codes, fmt)
        codes = y.to(dtype).view(torch.uint8)
        # Where torch's cast may disagree with the contract: overflow and non-finite inputs.
        risky = ~torch.isfinite(y) | (y.abs() > fmt.max)
        if bool(risky.any()):
            codes = codes.clone()
            codes[risky] = round_to_codes(y[risky], fmt, saturate=saturate)
        return codes.view(dtype)

    def cast_from_fp8(self, q, fmt: Format, scale_inv, granularity, out_dtype):
        if q.dtype == fmt.torch_dtype and self._ipex_cast(q, fmt, granularity):
            return self._ipex.cast_from(q, fmt, scale_inv, out_dtype)
        values = self._decode(q, fmt)
        return (values * granularity.per_element(scale_inv, q.shape)).to(out_dtype)

    @staticmethod
    def _decode(q: torch.Tensor, fmt: Format) -> torch.Tensor:
        if q.dtype == torch.uint8 or fmt.exponent_only:
            return fmt.code_values.to(torch.float32)[codes_of(q).to(torch.int64)]
        return q.to(torch.float32)

    # -- GEMM --------------------------------------------------------------------------------

    def scaled_mm(self, a: Fp8Tensor, b: Fp8Tensor, *, out_dtype, bias, c, fast_accum=False):
        # No fast accumulator declared: fast_accum is ignored (fp32 is at least as accurate).
        native = (
            a.format.name in _SCALED_MM_FORMATS
            and b.format.name in _SCALED_MM_FORMATS
            and (a.granularity.name, b.granularity.name) in self._scaled_mm_pairs
        )
        ipex_gemm = (
            a.data.device.type == "cpu"
            and self._ipex.gemm
            and a.format.name in _IPEX_FORMATS
            and b.format.name in _IPEX_FORMATS
            and a.granularity.is_tensorwise
            and b.granularity.is_tensorwise
        )
        if a.data.shape[1] == 0:  # an empty sum is +0 (torch._scaled_mm leaves it unwritten)
            out = torch.zeros(a.data.shape[0], b.data.shape[1], device=a.data.device)
        elif ipex_gemm:
            out = self._ipex.linear(a, b)
        elif native:
            out = torch_scaled_mm(
                a.data.contiguous(),
                b.data.t().contiguous().t(),
                a.scale_inv,
                b.scale_inv,
                out_dtype=torch.float32,
            )
        else:
            a32 = self._decode(a.data, a.format) * a.expanded_scale_inv()
            b32 = self._decode(b.data, b.format) * b.expanded_scale_inv()
            out = a32 @ b32
        if bias is not None:
            out = out + bias.to(torch.float32)
        if c is not None:
            out = out + c.to(torch.float32)
        return out.to(out_dtype)


@hookimpl
def portable_fp8_backends() -> list[Backend]:
    return [CpuBackend()]
