"""Host (CPU) time per call of each layer between model code and a GPU kernel.

While the GPU is held busy by a spin kernel (``torch.cuda._sleep``), the host issues N calls
and the wall time over N is what one call costs the host: no kernel time is in it. Layers,
from the bottom: ``torch.empty``, a bare Triton launch, the backend's primitives, the op API
(validation + registry), the torch.library custom op the FP8 Linear calls, and raw
``torch._scaled_mm`` for comparison. Median of 7 repetitions of 200 calls.

    python benchmarks/bench_host.py [--out benchmarks/results/host_h100.md]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

import portable_fp8 as fp8
from portable_fp8.formats import E4M3FN
from portable_fp8.nn import _custom_ops as cops

_CALLS = 200
_REPS = 7


def _host_us(fn) -> float:
    """Median host microseconds per call of ``fn`` while the GPU is busy."""
    for _ in range(3):
        fn()
    samples = []
    for _ in range(_REPS):
        torch.cuda.synchronize()
        torch.cuda._sleep(2_000_000_000 // 8)  # ~0.13 s of GPU spinning: longer than the loop
        t0 = time.perf_counter()
        for _ in range(_CALLS):
            fn()
        samples.append((time.perf_counter() - t0) * 1e6 / _CALLS)
        torch.cuda.synchronize()
    return statistics.median(samples)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="cuda")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    be = fp8.get_backend(args.backend)
    from portable_fp8.backends.nvidia import _casts

    x = torch.randn(16384, 4096, device="cuda", dtype=torch.bfloat16)
    bits = torch.zeros(1, dtype=torch.int32, device="cuda")
    a = fp8.quantize(torch.randn(16, 8192, device="cuda"), backend=args.backend)
    bt = fp8.quantize(torch.randn(8192, 8192, device="cuda"), backend=args.backend)
    b = bt.t()
    sa, sb = _casts.scale_inv_of(a), _casts.scale_inv_of(b)
    n = x.numel()
    amax = x.abs().amax().float()
    rows = [
        ("torch.empty", lambda: torch.empty((16384, 4096), dtype=torch.uint8, device="cuda")),
        (
            "bare Triton launch (amax kernel)",
            lambda: _casts.K.amax_flat_kernel[(n // 4096,)](x, bits, n, BLOCK=4096, num_warps=8),
        ),
        (
            "backend.quantize_transpose",
            lambda: be.quantize_transpose(
                x, E4M3FN, None, None, margin=0, power_of_two=False, saturate=True
            ),
        ),
        (
            "backend.quantize_transpose, given amax",
            lambda: be.quantize_transpose(
                x, E4M3FN, None, amax, margin=0, power_of_two=False, saturate=True
            ),
        ),
        ("fp8.quantize_transpose", lambda: fp8.quantize_transpose(x, backend=args.backend)),
        (
            "fp8.quantize_transpose, given amax",
            lambda: fp8.quantize_transpose(x, amax=amax, backend=args.backend),
        ),
        (
            "custom op quantize_transpose",
            lambda: cops.quantize_transpose(x, "e4m3fn", None, None, 0, False, args.backend),
        ),
        (
            "custom op quantize_transpose, given amax",
            lambda: cops.quantize_transpose(x, "e4m3fn", None, amax, 0, False, args.backend),
        ),
        (
            "torch._scaled_mm 16x8192x8192",
            lambda: torch._scaled_mm(a.data, b.data, sa, sb, out_dtype=torch.bfloat16),
        ),
        (
            "backend.scaled_mm 16x8192x8192",
            lambda: be.scaled_mm(a, b, out_dtype=torch.bfloat16, bias=None, c=None),
        ),
        ("fp8.scaled_mm 16x8192x8192", lambda: fp8.scaled_mm(a, b, backend=args.backend)),
        (
            "custom op scaled_mm 16x8192x8192",
            lambda: cops.scaled_mm(
                a.data,
                a.scale,
                "e4m3fn",
                "tensorwise",
                b.data,
                b.scale,
                "e4m3fn",
                "tensorwise",
                torch.bfloat16,
                args.backend,
            ),
        ),  # fmt: skip
    ]
    lines = [
        f"Host microseconds per call, GPU kept busy (median of {_REPS} x {_CALLS} calls).",
        "",
        f"Device: {torch.cuda.get_device_name()}; torch {torch.__version__}; "
        f"triton {_triton_version()}; Python {platform.python_version()}; "
        f"CPU {platform.processor() or platform.machine()}.",
        f"Command: `python benchmarks/bench_host.py --backend {args.backend}`",
        "",
        "| call | host us |",
        "| --- | ---: |",
    ]
    for name, fn in rows:
        lines.append(f"| {name} | {_host_us(fn):.1f} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


def _triton_version() -> str:
    import triton

    return triton.__version__


if __name__ == "__main__":
    main()
