"""What the ``cuda`` and ``triton`` backends share: availability, capabilities, GEMM dispatch.

Availability: both need an importable triton (their casts are Triton kernels). On a CUDA
device they need compute capability >= 8.9 (FP8 tensor cores: Ada, Hopper and later). The
``triton`` backend can instead run on CPU tensors in Triton's interpreter: set
``TRITON_INTERPRET=1`` (or ``PORTABLE_FP8_TRITON_INTERPRET=1``, which sets it before the
kernels are compiled) in the environment of the process, before anything imports triton
(``import portable_fp8`` does, through torch.library): otherwise the backend says so in its
unavailable reason. Its devices are then ``{"cpu"}`` and its priority is below the CPU
backends, so it runs only when named.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from portable_fp8.dispatch.backend import Backend, Capabilities
from portable_fp8.numerics.formats import element_formats
from portable_fp8.numerics.granularity import GRANULARITIES

from ._casts import TritonCastsMixin
from ._facts import DEEPGEMM_PROMOTED_ACCUMULATOR

__all__ = ["NvidiaBackend", "interpreter_requested", "MIN_CAPABILITY", "GEMM_MODES"]

#: Compute capability from which CUDA devices have FP8 tensor cores.
MIN_CAPABILITY = (8, 9)

#: (A granularity, B granularity) -> GEMM scale mode of :mod:`._triton_gemm`.
GEMM_MODES = {
    ("tensorwise", "tensorwise"): 0,
    ("rowwise", "columnwise"): 1,
    ("block_1x128", "block_128x128"): 2,
}

_OCP_E4M3 = ("e4m3fn", "e4m3_gaudi2")  # Gaudi2's E4M3 is E4M3FN codes with a smaller range


def interpreter_requested() -> bool:
    """Whether this process asked for Triton's CPU interpreter."""
    return (
        os.environ.get("TRITON_INTERPRET") == "1"
        or os.environ.get("PORTABLE_FP8_TRITON_INTERPRET") == "1"
    )


def gemm_format_pairs(e5m2_pair: bool) -> frozenset[tuple[str, str]]:
    """E4M3 x E4M3, E4M3 x E5M2 and E5M2 x E4M3 (and E5M2 x E5M2 where the kernel takes it)."""
    pairs = {(a, b) for a in _OCP_E4M3 for b in _OCP_E4M3}
    pairs |= {(a, "e5m2") for a in _OCP_E4M3} | {("e5m2", b) for b in _OCP_E4M3}
    if e5m2_pair:
        pairs.add(("e5m2", "e5m2"))
    return frozenset(pairs)


class NvidiaBackend(TritonCastsMixin, Backend):
    """Triton casts plus a GEMM path chosen by the subclass."""

    #: Whether this backend may run on CPU tensors in Triton's interpreter.
    interpretable = False

    def __init__(self, *, e5m2_pair: bool, notes: tuple[str, ...]) -> None:
        self.interpreted = self.interpretable and interpreter_requested()
        self.capabilities = Capabilities(
            devices=frozenset({"cpu"} if self.interpreted else {"cuda"}),
            cast_formats=frozenset(f.name for f in element_formats()),
            gemm_formats=gemm_format_pairs(e5m2_pair),
            granularities=frozenset(GRANULARITIES),
            gemm_granularities=frozenset(GEMM_MODES),
            accumulator=DEEPGEMM_PROMOTED_ACCUMULATOR,
            notes=notes,
        )
        if self.interpreted:
            self.priority = -10

    def unavailable_reason(self) -> str | None:
        if importlib.util.find_spec("triton") is None:
            return "triton is not importable (pip install 'portable-fp8[nvidia]')"
        if self.interpreted:
            from . import _triton_kernels

            return _triton_kernels.interpreter_problem()
        if not torch.cuda.is_available():
            return "no CUDA device (torch.cuda.is_available() is False)"
        cap = torch.cuda.get_device_capability()
        if cap < MIN_CAPABILITY:
            name = torch.cuda.get_device_name()
            return f"{name} has compute capability {cap[0]}.{cap[1]}; FP8 needs >= 8.9"
        return None

    def describe(self) -> dict:
        facts = {"torch": torch.__version__, "interpreter": self.interpreted}
        try:
            import triton

            facts["triton"] = triton.__version__
        except ImportError:
            facts["triton"] = None
        if torch.cuda.is_available() and not self.interpreted:
            facts["device"] = torch.cuda.get_device_name()
            facts["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
            facts["cuda"] = torch.version.cuda
        facts["cast_path"] = "Triton kernels, integer RNE/SR on fp32 bits"
        return facts
