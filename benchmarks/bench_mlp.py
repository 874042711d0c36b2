"""LLM-shaped MLP forward + backward: BF16 vs torchao float8 vs portable-fp8, all compiled.

The MLP is ``Linear(d, h) -> GELU -> Linear(h, d)`` without bias, d=4096, h=14336, on
16384 tokens of bf16 activations with bf16 weights (as in torchao's float8 benchmarks).
One timed step is forward, ``y.backward(dy)`` (dgrad of the input included) and dropping the
gradients. Each variant is a fresh copy of the same weights, converted, then
``torch.compile``d; after warm-up, steps are timed with CUDA events and the median is
reported, with the relative error of y against the BF16 run as a sanity check. Each round
also times its steps back to back (one event pair around all of them, no sync between
steps, as a training loop that does not read the loss every step runs): "pipelined ms".

    python benchmarks/bench_mlp.py --out benchmarks/results/mlp_h100.md

Variants: ``bf16``; ``torchao-tensorwise``, ``torchao-rowwise`` (skipped, and said so, if
torchao is not importable); ours with each recipe: ``ours-tensorwise``,
``ours-tensorwise-fastfwd`` (fast accumulation in the forward GEMM, as torchao's default),
``ours-rowwise``, ``ours-delayed``, ``ours-blockwise``.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time

import torch
from torch import nn

import portable_fp8 as fp8
import portable_fp8.nn as fp8nn

_OURS = {
    "ours-tensorwise": lambda: fp8nn.CurrentScaling(),
    # torchao's default: fast accumulation in the forward GEMM only.
    "ours-tensorwise-fastfwd": lambda: fp8nn.CurrentScaling(
        forward=fp8nn.GemmSpec("e4m3fn", "e4m3fn", fast_accum=True)
    ),
    "ours-rowwise": lambda: fp8nn.CurrentScaling(granularity="rowwise"),
    "ours-delayed": lambda: fp8nn.DelayedScaling(),
    "ours-blockwise": lambda: fp8nn.Blockwise(),
}
_TORCHAO = {"torchao-tensorwise": "tensorwise", "torchao-rowwise": "rowwise"}
#: Most important first, so a time limit cuts the least important.
_ORDER = (
    "bf16",
    "torchao-tensorwise",
    "ours-tensorwise",
    "ours-tensorwise-fastfwd",
    "torchao-rowwise",
    "ours-rowwise",
    "ours-blockwise",
    "ours-delayed",
)


def _mlp(d: int, h: int, device: str) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(d, h, bias=False), nn.GELU(), nn.Linear(h, d, bias=False))
    return model.to(device=device, dtype=torch.bfloat16)


def _make(name: str, base: nn.Module, backend: str | None) -> tuple[nn.Module, str]:
    model = copy.deepcopy(base)
    if name == "bf16":
        return model, ""
    if name in _TORCHAO:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training

        cfg = Float8LinearConfig.from_recipe_name(_TORCHAO[name])
        convert_to_float8_training(model, config=cfg)
        import torchao

        return model, f"torchao {torchao.__version__}"
    report = fp8nn.convert(model, _OURS[name](), backend=backend).fp8_conversion
    if report.skipped:
        raise RuntimeError(str(report))
    return model, f"backend {report.backend}"


def _time(fn, warmup: int, iters: int, device: str) -> list[float]:
    """Milliseconds per call: CUDA events on a GPU, perf_counter on the CPU (smoke tests)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device != "cuda":
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
            continue
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times


def _profile(step, name: str, rows: int, out_dir: str | None) -> None:
    """Print (and save) the GPU kernels of two steps, most time first (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(2):
            torch.cuda.synchronize()  # as in the timed loop
            step()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows)
    print(f"--- {name}: GPU kernels of 2 steps ---\n{table}", flush=True)
    if out_dir:
        with open(f"{out_dir}/profile_{name}.txt", "w") as f:
            f.write(table)
        import gzip

        trace = f"{out_dir}/trace_{name}.json"
        prof.export_chrome_trace(trace)
        with open(trace, "rb") as src, gzip.open(trace + ".gz", "wb") as dst:
            dst.write(src.read())
        os.remove(trace)


def _pipelined_ms(fn, iters: int) -> float:
    """Milliseconds per call of ``iters`` calls issued back to back between two CUDA events
    (the host runs ahead of the GPU; only a launch-bound step shows its host time)."""
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def _host_ms(step, steps: int = 10) -> float:
    """Milliseconds the host takes to issue one step (no sync inside: the GPU queue absorbs
    it). When this approaches the GPU time, the step is launch-bound."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    host = (time.perf_counter() - t0) * 1e3 / steps
    torch.cuda.synchronize()
    return host


def _sync_check(step, name: str) -> None:
    """Report any host-device synchronisation inside one step (it would stall the queue)."""
    import warnings

    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [str(w.message)[:160] for w in caught if "synchroniz" in str(w.message)]
    print(f"{name}: {len(syncs)} synchronising calls in one step", *syncs[:5], sep="\n  ")


def _cprofile(step, name: str, rows: int) -> None:
    """Python functions by own time over 10 steps (where the host time goes)."""
    import cProfile
    import pstats

    sync = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None
    sync()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(10):
        step()
    prof.disable()
    sync()
    print(f"--- {name}: Python functions of 10 steps, by own time ---", flush=True)
    pstats.Stats(prof).sort_stats("tottime").print_stats(rows)


def _backend_facts(name: str | None, device: str) -> str:
    try:
        backend = fp8.select_backend(name, device)
        return f"{backend.name}: {backend.describe()}"
    except Exception as exc:
        return f"unavailable: {exc}"


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"


def _write_table(rows, args, argv, device) -> str:
    bf16_ms = next((r[1] for r in rows if r[0] == "bf16" and r[1]), None)
    bf16_pipe = next((r[7] for r in rows if r[0] == "bf16" and r[1]), None)
    host_note = (
        "host ms: time to issue one step from Python (10 steps without a sync); when it nears "
        "the step time, the step is launch-bound."
    )
    lines = [
        f"MLP {args.dim} -> {args.hidden} -> {args.dim}, {args.tokens} tokens, bf16, "
        "forward + backward, torch.compile (default mode); median of "
        f"{args.iters} CUDA-event timings per variant, taken in {args.rounds} interleaved rounds "
        f"(each variant in turn) after {args.warmup} warm-up steps.",
        "",
        f"Device: {_device_name(device)}; torch {torch.__version__}; "
        f"portable-fp8 {fp8.__version__}; Python {platform.python_version()}.",
        f"Command: `python {' '.join([sys.argv[0], *(argv or sys.argv[1:])])}`",
        "",
        f"Our backend: `{_backend_facts(args.backend, device)}`",
        "",
        host_note,
        "",
        "| variant | ms | round medians ms | TFLOP/s | speed-up vs bf16 | pipelined ms "
        "| pipelined speed-up | rel. error of y vs bf16 | host ms | notes |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, ms, tf, err, host, spread, note, pipe in rows:
        if ms is None:
            lines.append(f"| {name} | - | - | - | - | - | - | - | - | {note} |")
            continue
        speed = f"{bf16_ms / ms:.2f}x" if bf16_ms else "-"
        pipe_speed = f"{bf16_pipe / pipe:.2f}x" if bf16_pipe else "-"
        lines.append(
            f"| {name} | {ms:.2f} | {spread[0]:.2f}-{spread[1]:.2f} | {tf:.0f} | {speed} "
            f"| {pipe:.2f} | {pipe_speed} | {err:.1e} | {host:.2f} | {note} |"
        )
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--dim", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=14336)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=60, help="timed steps per variant, in all")
    p.add_argument("--rounds", type=int, default=6, help="interleaved rounds over the variants")
    p.add_argument("--backend", default=None, help="our backend (default: the registry's)")
    p.add_argument("--variants", default=",".join(_ORDER))
    p.add_argument("--out", default=None, help="Markdown file for the results table")
    p.add_argument("--device", default="cuda", help="cpu only for smoke tests of the script")
    p.add_argument(
        "--profile", type=int, default=0, help="after timing, list this many top GPU kernels"
    )
    p.add_argument("--profile-dir", default=None, help="folder for the kernel tables")
    p.add_argument(
        "--cprofile", type=int, default=0, help="after timing, list this many Python functions"
    )
    args = p.parse_args(argv)
    device = args.device
    base = _mlp(args.dim, args.hidden, device)
    x = torch.randn(args.tokens, args.dim, device=device, dtype=torch.bfloat16)
    dy = torch.randn(args.tokens, args.dim, device=device, dtype=torch.bfloat16) * 1e-2
    flops = 3 * 2 * 2 * args.tokens * args.dim * args.hidden  # 2 layers x (fwd, dgrad, wgrad)
    ready, rows, ref_y = [], [], None
    for name in args.variants.split(","):  # build, compile and check every variant first
        t0 = time.perf_counter()
        try:
            model, note = _make(name, base, args.backend)
            compiled = torch.compile(model)
            xin = x.clone().requires_grad_()

            def step(compiled=compiled, model=model, xin=xin):
                y = compiled(xin)
                y.backward(dy)
                xin.grad = None
                for prm in model.parameters():
                    prm.grad = None
                return y

            y = step().detach().float()
            if ref_y is None:
                ref_y = y
            err = ((y - ref_y).norm() / ref_y.norm()).item()
            _time(step, args.warmup, 0, device)
        except Exception as exc:  # report, keep going with the other variants
            failed = f"failed: {type(exc).__name__}: {exc}"[:200]
            rows.append((name, None, None, None, None, None, failed, None))
            print(f"{name}: FAILED {exc}", flush=True)
            continue
        ready.append((name, step, err, note))
        print(f"{name}: ready, setup+compile {time.perf_counter() - t0:.0f} s", flush=True)
    # Interleaved rounds: clock and thermal drift hit every variant alike.
    times: dict[str, list[float]] = {name: [] for name, *_ in ready}
    round_medians: dict[str, list[float]] = {name: [] for name, *_ in ready}
    pipelined: dict[str, list[float]] = {name: [] for name, *_ in ready}
    per_round = max(1, args.iters // args.rounds)
    for _ in range(args.rounds):
        for name, step, _, _ in ready:
            t = _time(step, 1, per_round, device)
            times[name] += t
            round_medians[name].append(statistics.median(t))
            if device == "cuda":
                pipelined[name].append(_pipelined_ms(step, per_round))
    for name, step, err, note in ready:
        host = _host_ms(step) if device == "cuda" else float("nan")
        if device == "cuda":
            _sync_check(step, name)
        if args.profile and device == "cuda":
            _profile(step, name, args.profile, args.profile_dir)
        if args.cprofile:
            _cprofile(step, name, args.cprofile)
        ms = statistics.median(times[name])
        spread = (min(round_medians[name]), max(round_medians[name]))
        pipe = statistics.median(pipelined[name]) if pipelined[name] else float("nan")
        rows.append((name, ms, flops / ms / 1e9, err, host, spread, note, pipe))
        print(f"{name}: {ms:.3f} ms median, rounds {spread[0]:.3f}-{spread[1]:.3f}, "
              f"pipelined {pipe:.3f} ms, host {host:.2f} ms, {flops / ms / 1e9:.0f} TFLOP/s, "
              f"rel err {err:.2e}", flush=True)  # fmt: skip
    print(_write_table(rows, args, argv, device))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
