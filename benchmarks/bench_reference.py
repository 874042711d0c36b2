"""Speed of the reference emulator on this machine (a benchmark, not a timed test).

Measures, on random data, with warm-up runs excluded and the median of several timed runs:

* the reference cast bf16 -> e4m3fn of 2**24 elements (elements per second);
* the reference scaled GEMM 1024 x 1024 x 1024 (tensorwise E4M3FN operands) in its default
  exact-sum mode, and with the narrow-accumulator models HOPPER_FAST_ACCUMULATOR and
  FP32_ACCUMULATOR (one product per addition) (seconds).

Targets (issue 2): cast >= 50M elements/s, exact GEMM < 2 s, narrow-model GEMM < 20 s.
Prints a table and writes it, with the machine's facts, to
``benchmarks/results/reference_cpu.md``.

Run: ``python benchmarks/bench_reference.py`` (``--quick`` for a smoke run, no file written).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from portable_fp8.backends.nvidia import HOPPER_FAST_ACCUMULATOR

import portable_fp8 as fp8
from portable_fp8.numerics.gemm import (
    FP32_ACCUMULATOR,
    AccumulatorModel,
    reference_scaled_mm,
)

__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent / "results" / "reference_cpu.md"


def _median_seconds(fn: Callable[[], object], runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _bench_cast(n: int, runs: int) -> tuple[float, list[float]]:
    x = torch.randn(n, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    times = _median_seconds(
        lambda: fp8.cast_to_fp8(x, "e4m3fn", backend="reference"), runs=runs, warmup=1
    )
    return n / statistics.median(times), times


def _bench_gemm(size: int, accumulator: AccumulatorModel | None, runs: int) -> list[float]:
    g = torch.Generator().manual_seed(1)
    a = fp8.quantize(torch.randn(size, size, generator=g), "e4m3fn", backend="reference")
    b = fp8.quantize(torch.randn(size, size, generator=g), "e4m3fn", backend="reference")

    def run() -> torch.Tensor:
        return reference_scaled_mm(
            a.data,
            b.data,
            a.format,
            b.format,
            a.scale,
            b.scale,
            a.granularity,
            b.granularity,
            out_dtype=torch.float32,
            accumulator=accumulator,
        )

    return _median_seconds(run, runs=runs, warmup=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, no results file")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per measurement")
    args = parser.parse_args(argv)
    n = 1 << (20 if args.quick else 24)
    size = 256 if args.quick else 1024
    narrow_runs = 1 if args.quick else 3

    load_before = " ".join(f"{v:.2f}" for v in os.getloadavg())
    rate, cast_times = _bench_cast(n, args.runs)
    rows = [
        (
            f"reference cast bf16->e4m3fn, 2^{n.bit_length() - 1} elements",
            f"{rate / 1e6:.1f} M elem/s",
            ">= 50 M elem/s",
            rate >= 50e6,
            cast_times,
        )
    ]
    gemms = [
        ("exact sum (default)", None, args.runs, 2.0),
        ("HOPPER_FAST_ACCUMULATOR (13 bits, truncate, 32/add)", HOPPER_FAST_ACCUMULATOR, 0, 20.0),
        ("FP32_ACCUMULATOR (23 bits, nearest, 1/add)", FP32_ACCUMULATOR, 0, 20.0),
    ]
    for label, acc, runs, target in gemms:
        runs = runs or narrow_runs
        times = _bench_gemm(size, acc, runs)
        med = statistics.median(times)
        what = f"reference GEMM {size}^3, {label}"
        rows.append((what, f"{med:.3f} s", f"< {target:g} s", med < target, times))

    header = "| measurement | median | target | met | runs (s) |\n|---|---|---|---|---|"
    lines = [header] + [
        f"| {what} | {value} | {target} | {'yes' if ok else 'NO'} | "
        + ", ".join(f"{t:.3f}" for t in times)
        + " |"
        for what, value, target, ok, times in rows
    ]
    table = "\n".join(lines)
    print(table)
    if not args.quick:
        facts = [
            f"- command: `python benchmarks/{Path(__file__).name}`",
            f"- date (UTC): {time.strftime('%Y-%m-%d %H:%M', time.gmtime())}",
            f"- nproc: {os.cpu_count()}, torch threads: {torch.get_num_threads()}, "
            f"load average before the run: {load_before}",
            f"- cpu: {_cpu_model()}",
            f"- python {platform.python_version()}, torch {torch.__version__}",
            "- data: torch.randn (seeded); cast timings include the op layer's validation;",
            "  GEMM operands quantised tensorwise to e4m3fn, fp32 output;",
            "  one warm-up run excluded, then the median of the timed runs.",
        ]
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(
            "# Reference emulator speed on the CPU\n\n" + "\n".join(facts) + "\n\n" + table + "\n"
        )
        print(f"written to {RESULTS}")
    return 0 if all(ok for *_, ok, _ in rows) else 1


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
