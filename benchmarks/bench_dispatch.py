"""Host cost of the op layer itself: validation, backend choice and capability checks per call.

Each op is called through :mod:`portable_fp8.dispatch.ops` against a stand-in backend whose
primitives
return preallocated results at once, so what is timed is the op layer's own Python (no
kernel, no allocation by the backend). For scale, the same table times a few raw torch calls,
and the ``cuda`` backend's own ``scaled_mm`` on CPU tensors with ``torch._scaled_mm`` stubbed
out (its Python between the op layer and cuBLASLt). Each row: median over batches of the
per-call time of ``--calls`` calls (``time.perf_counter_ns``), after a warm-up batch.
``--baseline REV`` also times the source tree of git revision REV (in a subprocess, from a
``git archive`` of it) and shows both columns; ``--profile`` adds cProfile's top entries per
op-layer call.

``--cuda`` instead measures, on a GPU, what the issue's target is about: host time per call
of ``portable_fp8.scaled_mm`` (tensorwise, 16x8192x8192, ``cuda`` backend) against raw
``torch._scaled_mm`` on the same operands, and of ``quantize_transpose`` through each layer
(backend, op API, the custom op the FP8 Linear calls), while the GPU is kept busy
(``torch.cuda._sleep``) so that no kernel time is in it; the calls are interleaved batch by
batch, and the overhead is the median of the per-batch differences.

    python benchmarks/bench_dispatch.py [--baseline REV] [--out FILE.md] [--profile]
    python benchmarks/bench_dispatch.py --cuda
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

import portable_fp8 as fp8
from portable_fp8.dispatch import ops, registry
from portable_fp8.dispatch.backend import Backend, Capabilities, CastTranspose
from portable_fp8.numerics.formats import E4M3FN, element_formats
from portable_fp8.numerics.granularity import GRANULARITIES, TENSORWISE
from portable_fp8.numerics.tensor import Fp8Tensor

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

    def scaled_mm(self, a, b, *, out_dtype, bias, c, fast_accum=False):
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


@contextlib.contextmanager
def _stub_scaled_mm(out: torch.Tensor) -> Iterator[None]:
    """Replace ``torch._scaled_mm`` by a function returning ``out`` (restored after)."""
    real = torch._scaled_mm
    torch._scaled_mm = lambda *args, **kwargs: out
    try:
        yield
    finally:
        torch._scaled_mm = real


Row = tuple[str, str, Callable[[], object], Callable[[], contextlib.AbstractContextManager]]


def _rows() -> list[Row]:
    """(layer, call, function, context to time it in) for every row of the table."""
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
    bias = torch.zeros(n, dtype=torch.bfloat16)

    from portable_fp8.backends.nvidia.cuda import CudaBackend

    cuda_be = CudaBackend()  # its Python runs on CPU tensors; not registered
    none = contextlib.nullcontext
    return [
        ("op", "scaled_mm tensorwise (by device)", lambda: ops.scaled_mm(qa, qb), none),
        (
            "op",
            "scaled_mm tensorwise, backend=",
            lambda: ops.scaled_mm(qa, qb, backend=_STANDIN),
            none,
        ),
        ("op", "scaled_mm rowwise x columnwise", lambda: ops.scaled_mm(rowa, rowb), none),
        ("op", "scaled_mm tensorwise + bias", lambda: ops.scaled_mm(qa, qb, bias=bias), none),
        ("op", "quantize, scale given", lambda: ops.quantize(x, scale=s), none),
        ("op", "quantize, scale=None", lambda: ops.quantize(x), none),
        ("op", "quantize_transpose", lambda: ops.quantize_transpose(x), none),
        ("op", "cast_to_fp8, scale given", lambda: ops.cast_to_fp8(x, scale=s), none),
        (
            "backend",
            "cuda backend scaled_mm, _scaled_mm stubbed",
            lambda: cuda_be.scaled_mm(qa, qb, out_dtype=torch.bfloat16, bias=None, c=None),
            lambda: _stub_scaled_mm(out),
        ),
        ("raw", "torch.empty((16, 32))", lambda: torch.empty((16, 32)), none),
        ("raw", "scale.reshape(())", lambda: s.reshape(()), none),
        ("raw", "torch.reciprocal(scale)", lambda: torch.reciprocal(s), none),
        ("raw", "x.to(float8_e4m3fn)", lambda: x.to(torch.float8_e4m3fn), none),
    ]


def _measure(rows: list[Row], calls: int, batches: int) -> dict[str, float]:
    times = {}
    for _, name, fn, context in rows:
        with context():
            times[name] = _per_call_us(fn, calls, batches)
    return times


def _measure_revision(rev: str, calls: int, batches: int) -> dict[str, float]:
    """This script's table for the source tree of git revision ``rev`` (run in a subprocess)."""
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(
            ["git", "-C", str(root), "archive", rev], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        # the installed layout: portable_fp8.backends is backends/ (see pyproject.toml)
        os.symlink("../backends", os.path.join(tmp, "portable_fp8", "backends"))
        env = {**os.environ, "PYTHONPATH": tmp}
        cmd = [sys.executable, __file__, "--json", f"--calls={calls}", f"--batches={batches}"]
        done = subprocess.run(cmd, env=env, cwd=tmp, check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def _interleaved_host_us(fns: dict, reps: int, calls: int) -> dict[str, list[float]]:
    """Host us per call of each function, one sample per round, while the GPU spins.

    Rounds rotate the order (no position bias); the first round is warm-up.
    """
    names = list(fns)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps + 1):
        torch.cuda.synchronize()
        torch.cuda._sleep(200_000_000)  # ~0.1 s of spinning: longer than the host's loop
        k = r % len(names)
        for name in names[k:] + names[:k]:
            fn = fns[name]
            t0 = time.perf_counter_ns()
            for _ in range(calls):
                fn()
            if r:
                samples[name].append((time.perf_counter_ns() - t0) / calls / 1e3)
        torch.cuda.synchronize()
    return samples


def _host_table(samples: dict[str, list[float]]) -> list[str]:
    """Median host us per call and the median per-round difference to the first row."""
    first = next(iter(samples.values()))
    lines = [
        f"| call | host us per call | over `{next(iter(samples))}` |",
        "|---|---:|---:|",
    ]
    for name, times in samples.items():
        diff = statistics.median(t - f for t, f in zip(times, first, strict=True))
        lines.append(f"| {name} | {statistics.median(times):.2f} | {diff:.2f} |")
    return lines


def _cuda_overhead(reps: int, calls: int) -> str:
    """Host us per call through each layer, GPU busy: the GEMM (16x8192x8192) against raw
    torch._scaled_mm, and quantize_transpose (4096x4096 bf16) against the backend's method."""

    from portable_fp8.nn import _custom_ops as cops

    cuda_be = fp8.get_backend("cuda")
    a = ops.quantize(torch.randn(16, 8192, device="cuda"), backend="cuda")
    b = ops.quantize(torch.randn(8192, 8192, device="cuda"), backend="cuda").t()
    sa, sb = a.scale_inv, b.scale_inv
    bf16 = torch.bfloat16
    gemms = {
        "raw torch._scaled_mm": lambda: torch._scaled_mm(
            a.data, b.data, sa, sb, out_dtype=bf16, use_fast_accum=cuda_be.fast_accum
        ),
        "cuda backend .scaled_mm": lambda: cuda_be.scaled_mm(
            a, b, out_dtype=bf16, bias=None, c=None
        ),
        "fp8.scaled_mm, backend='cuda'": lambda: fp8.scaled_mm(a, b, backend="cuda"),
        "fp8.scaled_mm (by device)": lambda: fp8.scaled_mm(a, b),
        "custom op scaled_mm (FP8 Linear)": lambda: cops.scaled_mm(
            a.data,
            a.scale,
            a.scale_inv,
            "e4m3fn",
            "tensorwise",
            b.data,
            b.scale,
            b.scale_inv,
            "e4m3fn",
            "tensorwise",
            bf16,
            False,
            "cuda",
        ),  # fmt: skip
    }
    x = torch.randn(4096, 4096, device="cuda", dtype=bf16)
    amax = x.abs().amax().float()
    casts = {
        "cuda backend .quantize_transpose, given amax": lambda: cuda_be.quantize_transpose(
            x, E4M3FN, None, amax, margin=0, power_of_two=False, saturate=True
        ),
        "cuda backend .quantize_transpose (amax pass)": lambda: cuda_be.quantize_transpose(
            x, E4M3FN, None, None, margin=0, power_of_two=False, saturate=True
        ),
        "fp8.quantize_transpose, given amax": lambda: fp8.quantize_transpose(
            x, amax=amax, backend="cuda"
        ),
        "custom op quantize_transpose, given amax (FP8 Linear)": lambda: cops.quantize_transpose(
            x, "e4m3fn", None, amax, 0, False, "cuda"
        ),
    }
    gemm_samples = _interleaved_host_us(gemms, reps, calls)
    cast_samples = _interleaved_host_us(casts, reps, calls)
    lines = [
        f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}; "
        f"{reps} rounds x {calls} calls, interleaved; differences are medians of per-round "
        "differences",
        "",
        *_host_table(gemm_samples),
        "",
        *_host_table(cast_samples),
        "",
        "Python alone (torch._scaled_mm stubbed: nothing is launched), median of batches:",
        "",
        "| call | host us per call |",
        "|---|---:|",
    ]
    with _stub_scaled_mm(torch.empty(16, 8192, dtype=bf16, device="cuda")):
        for name in list(gemms)[1:]:
            lines.append(f"| {name} | {_per_call_us(gemms[name], 2000, 11):.2f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--batches", type=int, default=11)
    p.add_argument("--baseline", metavar="REV", help="also time git revision REV's source")
    p.add_argument("--profile", action="store_true", help="cProfile each op-layer call")
    p.add_argument("--json", action="store_true", help="print {call: us} only")
    p.add_argument("--out", default=None, help="also write the table as Markdown here")
    p.add_argument("--cuda", action="store_true", help="host cost over raw _scaled_mm on a GPU")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.cuda:
        print(_cuda_overhead(reps=31, calls=100))
        return

    rows = _rows()
    if args.json:
        print(json.dumps(_measure(rows, args.calls, args.batches)))
        return
    before = _measure_revision(args.baseline, args.calls, args.batches) if args.baseline else {}
    now = _measure(rows, args.calls, args.batches)
    if before:
        header = f"| layer | call | {args.baseline} us | now us | now / before |"
        header += "\n|---|---|---:|---:|---:|"
        body = [
            f"| {kind} | {name} | {before[name]:.2f} | {now[name]:.2f} | "
            f"{now[name] / before[name]:.2f} |"
            for kind, name, _, _ in rows
        ]
    else:
        header = "| layer | call | us per call |\n|---|---|---:|"
        body = [f"| {kind} | {name} | {now[name]:.2f} |" for kind, name, _, _ in rows]
    text = "\n".join([header, *body])
    print(text)

    if args.profile:
        for kind, name, fn, context in rows:
            if kind == "op":
                with context():
                    print(f"\n### {name}\n\n```\n{_profile(fn, args.calls, 12)}\n```")

    if args.out:
        cpu = platform.processor() or platform.machine()
        with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
        command = "python " + " ".join(sys.argv)
        head = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        lines = [
            "# Op-layer dispatch cost (CPU, stand-in backend)",
            "",
            f"Command: `{command}` (`now`: the working tree at {head or 'an unknown commit'})",
            "",
            f"Machine: {cpu} ({os.cpu_count()} cores, shared), {platform.system()} "
            f"{platform.release()}; one torch thread; torch {torch.__version__}, "
            f"Python {platform.python_version()}, portable-fp8 {fp8.__version__}.",
            "",
            "`op` rows call `portable_fp8.dispatch.ops` against a backend whose primitives return "
            "preallocated results, so they are the op layer's own cost. The `backend` row is "
            "the `cuda` backend's Python around `torch._scaled_mm` (stubbed). `raw` rows are "
            "single torch calls, for scale. Median over batches of the per-call mean.",
            "",
            text,
            "",
        ]
        with open(args.out, "w") as f:
            f.write("\n".join(lines))


if __name__ == "__main__":
    main()
