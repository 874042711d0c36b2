"""Host cost of the op layer itself: validation, backend choice and capability checks per call.

Each op is called through :mod:`portable_fp8.ops` against a stand-in backend whose primitives
return preallocated results at once, so what is timed is the op layer's own Python (no
kernel, no allocation by the backend). For scale, the same table times a few raw torch calls
and the ``cuda`` backend's own ``scaled_mm`` on CPU tensors (its Python around
``torch._scaled_mm``, which runs on CPU too) against raw ``torch._scaled_mm`` on the same
tensors. Each row: median over batches of the per-call time of ``--calls`` calls
(``time.perf_counter_ns``), after a warm-up batch. ``--profile`` adds cProfile's top entries
per op-layer call.

    python benchmarks/bench_dispatch.py [--out benchmarks/results/dispatch_cpu.md] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import platform
import pstats
import statistics
import sys
import time
from collections.abc import Callable

import torch

import portable_fp8 as fp8
from portable_fp8 import ops, registry
from portable_fp8.backend import Backend, Capabilities, CastTranspose
from portable_fp8.formats import E4M3FN, element_formats
from portable_fp8.granularity import GRANULARITIES, TENSORWISE
from portable_fp8.tensor import Fp8Tensor

_STANDIN = "dispatch_standin"


class _StandIn(Backend):
    """Declares what the ``cuda`` backend declares (on CPU); every primitive returns at once."""

    name = _STANDIN
    priority = 10**6  # chosen by device for CPU tensors while registered

    def __init__(self, x: torch.Tensor, out: torch.Tensor) -> None:
        from portable_fp8.backends.nvidia._base import GEMM_MODES, gemm_format_pairs

        self.capabilities = Capabilities(
            devices=frozenset({"cpu"}),
            cast_formats=frozenset(f.name for f in element_formats()),
            gemm_formats=gemm_format_pairs(False),
            granularities=frozenset(GRANULARITIES),
            gemm_granularities=frozenset(GEMM_MODES),
        )
        codes = torch.zeros(x.shape, dtype=torch.float8_e4m3fn)
        scale = torch.ones((), dtype=torch.float32)
        self._codes, self._out = codes, out
        self._q = Fp8Tensor(codes, scale, E4M3FN, TENSORWISE)
        self._ct = CastTranspose(self._q, self._q.t(), scale)

    def cast_to_fp8(self, x, fmt, scale, granularity, *, saturate, rand_bits):
        return self._codes

    def quantize_dynamic(self, x, fmt, granularity, *, margin, power_of_two, saturate, rand_bits):
        return self._q

    def quantize_transpose(self, x, fmt, scale, amax, *, margin, power_of_two, saturate):
        return self._ct

    def scaled_mm(self, a, b, *, out_dtype, bias, c):
        return self._out


def _register(backend: Backend) -> None:
    """Make ``backend`` known by name and the choice for CPU tensors (private registry state)."""
    state = registry._registry()
    state.backends[backend.name] = backend
    state.unavailable[backend.name] = None
    state.by_device.clear()


def _per_call_us(fn: Callable[[], object], calls: int, batches: int) -> float:
    """Median over ``batches`` of the mean time of one call in a batch of ``calls``, in us."""
    for _ in range(calls):  # warm-up batch, not counted
        fn()
    samples = []
    for _ in range(batches):
        t0 = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter_ns() - t0) / calls / 1e3)
    return statistics.median(samples)


def _profile(fn: Callable[[], object], calls: int, top: int) -> str:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
    start = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls"))
    return "\n".join(lines[start:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--batches", type=int, default=11)
    p.add_argument("--profile", action="store_true", help="cProfile each op-layer call")
    p.add_argument("--out", default=None, help="also write the table as Markdown here")
    args = p.parse_args()
    torch.set_num_threads(1)

    m, k, n = 16, 64, 32
    x = torch.randn(m, k, dtype=torch.bfloat16)
    s = torch.tensor(2.0)
    out = torch.empty(m, n, dtype=torch.bfloat16)
    _register(_StandIn(x, out))
    q8 = torch.randn(m, k).to(torch.float8_e4m3fn)
    w8 = torch.randn(n, k).to(torch.float8_e4m3fn)
    qa = Fp8Tensor(q8, s, E4M3FN, TENSORWISE)
    qb = Fp8Tensor(w8, s, E4M3FN, TENSORWISE).t()  # K x N, column-major: cuBLASLt's layout
    rowa = ops.quantize(x.float(), granularity="rowwise", backend="reference")
    rowb = ops.quantize(w8.float(), granularity="rowwise", backend="reference").t()
    sa, sb = torch.tensor(0.5), torch.tensor(0.5)
    bias = torch.zeros(n, dtype=torch.bfloat16)

    from portable_fp8.backends.nvidia.cuda import CudaBackend

    cuda_be = CudaBackend()  # its Python runs on CPU tensors; not registered

    rows: list[tuple[str, str, Callable[[], object]]] = [
        ("op", "scaled_mm tensorwise (by device)", lambda: ops.scaled_mm(qa, qb)),
        ("op", "scaled_mm tensorwise, backend=", lambda: ops.scaled_mm(qa, qb, backend=_STANDIN)),
        ("op", "scaled_mm rowwise x columnwise", lambda: ops.scaled_mm(rowa, rowb)),
        ("op", "scaled_mm tensorwise + bias", lambda: ops.scaled_mm(qa, qb, bias=bias)),
        ("op", "quantize, scale given", lambda: ops.quantize(x, scale=s)),
        ("op", "quantize, scale=None", lambda: ops.quantize(x)),
        ("op", "quantize_transpose", lambda: ops.quantize_transpose(x)),
        ("op", "cast_to_fp8, scale given", lambda: ops.cast_to_fp8(x, scale=s)),
        ("raw", "torch.empty((16, 32))", lambda: torch.empty((16, 32))),
        ("raw", "scale.reshape(())", lambda: s.reshape(())),
        ("raw", "torch.reciprocal(scale)", lambda: torch.reciprocal(s)),
        ("raw", "x.to(float8_e4m3fn)", lambda: x.to(torch.float8_e4m3fn)),
        (
            "raw",
            "torch._scaled_mm 16x64x32",
            lambda: torch._scaled_mm(q8, w8.t(), sa, sb, out_dtype=torch.bfloat16),
        ),
        (
            "backend",
            "cuda backend scaled_mm 16x64x32",
            lambda: cuda_be.scaled_mm(qa, qb, out_dtype=torch.bfloat16, bias=None, c=None),
        ),
    ]
    table = []
    for kind, name, fn in rows:
        table.append((kind, name, _per_call_us(fn, args.calls, args.batches)))
    raw_mm = next(us for _, name, us in table if name.startswith("torch._scaled_mm"))

    header = "| layer | call | us per call |\n|---|---|---:|"
    body = [f"| {kind} | {name} | {us:.2f} |" for kind, name, us in table]
    cuda_us = table[-1][2]
    body.append(f"| backend | cuda backend's Python over raw _scaled_mm | {cuda_us - raw_mm:.2f} |")
    text = "\n".join([header, *body])
    print(text)

    profiles = []
    if args.profile:
        for kind, name, fn in rows:
            if kind == "op":
                profiles.append(f"### {name}\n\n```\n{_profile(fn, args.calls, 12)}\n```")
        print("\n\n".join(profiles))

    if args.out:
        cpu = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
        except (OSError, StopIteration):
            pass
        command = "python " + " ".join(sys.argv)
        lines = [
            "# Op-layer dispatch cost (CPU, stand-in backend)",
            "",
            f"Command: `{command}`",
            "",
            f"Machine: {cpu}, {platform.system()} {platform.release()}; one torch thread; "
            f"torch {torch.__version__}, Python {platform.python_version()}, "
            f"portable-fp8 {fp8.__version__}.",
            "",
            "`op` rows call `portable_fp8.ops` against a backend whose primitives return "
            "preallocated results, so they are the op layer's own cost. `raw` rows are single "
            "torch calls for scale. Median over batches of the per-call mean.",
            "",
            text,
            "",
        ]
        with open(args.out, "w") as f:
            f.write("\n".join(lines))


if __name__ == "__main__":
    main()
