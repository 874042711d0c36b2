"""Benchmark of the ``cuda`` and ``triton`` backends against what users would call otherwise.

Everything is measured in one run, side by side: median GPU time of many repetitions
(``triton.testing.do_bench``, warm-up excluded) on random non-zero data, plus the host time
per call (to expose Python overhead that GPU queueing hides on small problems).

GEMM shapes are M x K x N (A is M x K, B is K x N). Usage::

    python benchmarks/bench_nvidia.py --out benchmarks/results   # writes nvidia_<gpu>.md/json
    python benchmarks/bench_nvidia.py --quick                    # fewer shapes
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import torch

import portable_fp8 as fp8
from portable_fp8.dispatch.registry import get_backend
from portable_fp8.numerics.formats import E4M3FN
from portable_fp8.numerics.granularity import GRANULARITIES
from portable_fp8.numerics.tensor import Fp8Tensor

__all__ = ["main"]

GEMM_SHAPES = [(8192, 8192, 8192), (4096, 4096, 4096), (8192, 4096, 14336), (16, 8192, 8192)]
BLOCK_SHAPES = [(8192, 8192, 8192), (4096, 16384, 7168)]  # M x K x N (DeepGEMM: N=7168,K=16384)
QUANT_NUMEL = 1 << 28


def _bench(fn, rep_ms: int = 200) -> float:
    """Median GPU time in microseconds (events around each call, warm-up excluded)."""
    import triton.testing

    return triton.testing.do_bench(fn, warmup=50, rep=rep_ms, return_mode="median") * 1e3


def _host_us(fns: dict, calls: int = 100, rounds: int = 40) -> dict:
    """Host (CPU) time per call in microseconds of each function, interleaved round-robin.

    Each round times ``calls`` calls of every function, then synchronises; batches are short
    enough that the GPU's launch queue never fills, so the time is the host's own cost per
    call, not the GPU's time per GEMM. The minimum over rounds is reported (the least
    disturbed by other processes on the host).
    """
    best = {name: float("inf") for name in fns}
    for fn in fns.values():
        for _ in range(20):
            fn()
    torch.cuda.synchronize()
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            t1 = time.perf_counter()
            torch.cuda.synchronize()
            best[name] = min(best[name], (t1 - t0) / calls * 1e6)
    return best


def _operands(m: int, k: int, n: int, pair: tuple[str, str], backend: str):
    """Quantised A (M x K, row-major) and B (K x N, column-major) on the GPU."""
    a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)  # B = W^T: column-major
    qa = fp8.quantize(a, "e4m3fn", granularity=pair[0], backend=backend)
    qw = fp8.quantize(w, "e4m3fn", granularity=GRANULARITIES[pair[1]].transposed(), backend=backend)
    qb = qw.t()
    qb = Fp8Tensor(qb.data, qb.scale, qb.format, GRANULARITIES[pair[1]])
    return qa, qb


def bench_gemms(shapes, rows: list[dict]) -> None:
    modes = (("tensorwise", ("tensorwise", "tensorwise")), ("rowwise", ("rowwise", "columnwise")))
    for mode, pair in modes:
        for m, k, n in shapes:
            row = _bench_gemm(mode, pair, m, k, n)
            rows.append(row)
            print(_fmt_row(row), flush=True)


def _bench_gemm(mode: str, pair: tuple[str, str], m: int, k: int, n: int) -> dict:
    cuda_be = get_backend("cuda")
    qa, qb = _operands(m, k, n, pair, "cuda")
    sa, sb = qa.scale_inv, qb.scale_inv
    if mode == "rowwise":
        sa, sb = sa.reshape(m, 1), sb.reshape(1, n)
    else:
        sa, sb = sa.reshape(()), sb.reshape(())
    a_data, b_data = qa.data, qb.data
    flop = 2.0 * m * n * k

    def raw(fast=False):
        return torch._scaled_mm(
            a_data, b_data, sa, sb, out_dtype=torch.bfloat16, use_fast_accum=fast
        )

    def ours():
        return fp8.scaled_mm(qa, qb, out_dtype=torch.bfloat16, backend="cuda")

    def ours_auto():
        return fp8.scaled_mm(qa, qb, out_dtype=torch.bfloat16)

    def backend_direct():
        return cuda_be.scaled_mm(qa, qb, out_dtype=torch.bfloat16, bias=None, c=None)

    def tri():
        return fp8.scaled_mm(qa, qb, out_dtype=torch.bfloat16, backend="triton")

    # correctness guard: our result equals the raw call (same library, same inputs)
    same = torch.equal(ours(), raw())
    tri_rel = float((tri().float() - raw().float()).norm() / raw().float().norm())
    # raw and ours alternate (4 medians each, the least kept), each first in half the rounds:
    # at 8192^3 the second of a pair ran ~9% slower (same kernel, same bits), which points at
    # power or clock throttling after the first's ~0.1 s of full load.
    t_raw = t_ours = float("inf")
    for i in range(4):
        if i % 2:
            t_ours = min(t_ours, _bench(ours, 100))
            t_raw = min(t_raw, _bench(raw, 100))
        else:
            t_raw = min(t_raw, _bench(raw, 100))
            t_ours = min(t_ours, _bench(ours, 100))
    t_tri = _bench(tri)
    t_fast = _bench(lambda: raw(True))
    row = {
        "kind": "gemm",
        "scaling": mode,
        "shape_MxKxN": f"{m}x{k}x{n}",
        "raw_scaled_mm_us": t_raw,
        "ours_cuda_us": t_ours,
        "ratio_ours_vs_raw": t_raw / t_ours,
        "raw_TFLOPs": flop / t_raw / 1e6,
        "ours_TFLOPs": flop / t_ours / 1e6,
        "raw_fast_accum_TFLOPs": flop / t_fast / 1e6,
        "triton_us": t_tri,
        "triton_TFLOPs": flop / t_tri / 1e6,
        "triton_vs_cublas": t_raw / t_tri,
        "ours_bitwise_equal_raw": same,
        "triton_rel_diff_to_cublas": tri_rel,
    }
    if m <= 64:
        h = _host_us({"raw": raw, "ours": ours, "auto": ours_auto, "direct": backend_direct})
        h_raw, h_ours, h_auto, h_direct = h["raw"], h["ours"], h["auto"], h["direct"]
        row.update(
            host_raw_us=h_raw,
            host_ours_us=h_ours,
            host_ours_auto_us=h_auto,
            host_backend_direct_us=h_direct,
            added_host_us=h_ours - h_raw,
            ops_layer_us=h_ours - h_direct,
        )
    return row


SWEEP_CONFIGS = [
    {"BLOCK_M": 128, "BLOCK_N": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 4},
    {"BLOCK_M": 128, "BLOCK_N": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 5},
    {"BLOCK_M": 128, "BLOCK_N": 256, "GROUP_M": 8, "num_warps": 8, "num_stages": 3},
    {"BLOCK_M": 64, "BLOCK_N": 256, "GROUP_M": 8, "num_warps": 4, "num_stages": 4},
]


def sweep_triton_configs(rows: list[dict], m: int = 8192, k: int = 8192, n: int = 8192) -> None:
    """Triton GEMM TFLOP/s per tile configuration (to choose the fixed heuristics)."""
    from portable_fp8.backends.nvidia import _triton_gemm as tg

    cases = (
        ("tensorwise", ("tensorwise", "tensorwise"), tg.TENSORWISE),
        ("block", ("block_1x128", "block_128x128"), tg.BLOCKWISE),
    )
    for name, pair, mode in cases:
        qa, qb = _operands(m, k, n, pair, "triton")
        sa, sb = qa.scale_inv, qb.scale_inv
        result = {}
        for cfg in SWEEP_CONFIGS:
            label = "{BLOCK_M}x{BLOCK_N}/w{num_warps}/s{num_stages}".format(**cfg)
            try:
                t = _bench(
                    lambda cfg=cfg, qa=qa, qb=qb, sa=sa, sb=sb, mode=mode: tg.scaled_mm(
                        qa,
                        qb,
                        sa,
                        sb,
                        mode,
                        out_dtype=torch.bfloat16,
                        bias=None,
                        c=None,
                        config=cfg,
                    )
                )
                result[label] = round(2.0 * m * n * k / t / 1e6, 1)
            except Exception as exc:  # e.g. out of shared memory for a config
                result[label] = f"{type(exc).__name__}"
        row = {
            "kind": "triton_config_sweep",
            "scaling": name,
            "shape_MxKxN": f"{m}x{k}x{n}",
            "TFLOPs_by_config": result,
        }
        rows.append(row)
        print(_fmt_row(row), flush=True)


def bench_blockwise(shapes, rows: list[dict]) -> None:
    for m, k, n in shapes:
        row = _bench_block(m, k, n)
        rows.append(row)
        print(_fmt_row(row), flush=True)


def _bench_block(m: int, k: int, n: int) -> dict:
    cuda_be = get_backend("cuda")
    qa, qb = _operands(m, k, n, ("block_1x128", "block_128x128"), "cuda")
    flop = 2.0 * m * n * k

    def cu():
        return fp8.scaled_mm(qa, qb, out_dtype=torch.bfloat16, backend="cuda")

    def tri():
        return fp8.scaled_mm(qa, qb, out_dtype=torch.bfloat16, backend="triton")

    t_cu, t_tri = _bench(cu), _bench(tri)
    rel = float((cu().float() - tri().float()).norm() / tri().float().norm())
    return {
        "kind": "blockwise_gemm",
        "shape_MxKxN": f"{m}x{k}x{n}",
        "cuda_path": cuda_be.describe().get("blockwise_path"),
        "cuda_us": t_cu,
        "cuda_TFLOPs": flop / t_cu / 1e6,
        "triton_us": t_tri,
        "triton_TFLOPs": flop / t_tri / 1e6,
        "rel_diff_cuda_vs_triton": rel,
    }


def bench_quantize(numel: int, rows: list[dict]) -> None:
    cuda_be = get_backend("cuda")
    side = int(numel**0.5)
    x = torch.randn(side, numel // side, device="cuda", dtype=torch.bfloat16)
    scale = torch.tensor(3.0, device="cuda")
    gbs = 3.0 * x.numel() / 1e3  # bytes / us -> GB/s numerator (3 bytes per element)

    def current_ours():
        return fp8.quantize(x, "e4m3fn", backend="cuda")

    def current_eager(t):
        amax = t.abs().amax().float()
        s = torch.where(amax > 0, 448.0 / amax, 1.0)
        return (t.float() * s).clamp(-448.0, 448.0).to(torch.float8_e4m3fn), s

    compiled = torch.compile(current_eager)

    def current_compiled():
        return compiled(x)

    def delayed_ours():
        return cuda_be.cast_with_amax(x, E4M3FN, scale)

    def plain_to():
        return x.to(torch.float8_e4m3fn)

    def copy():
        return x.clone()

    ours = fp8.quantize(x, "e4m3fn", backend="cuda")
    ref_codes = current_compiled()[0]
    agree = float((ours.data.view(torch.uint8) == ref_codes.view(torch.uint8)).float().mean())
    t = {
        name: _bench(fn)
        for name, fn in (
            ("current_ours", current_ours),
            ("current_torch_compile", current_compiled),
            ("delayed_ours_fused_amax", delayed_ours),
            ("plain_to_fp8", plain_to),
            ("bf16_clone", copy),
        )
    }
    row = {
        "kind": "quantize",
        "numel": x.numel(),
        **{f"{k}_us": v for k, v in t.items()},
        **{f"{k}_GBps_3B": gbs / v for k, v in t.items()},
        "current_ratio_vs_compile": t["current_torch_compile"] / t["current_ours"],
        "delayed_ratio_vs_plain_to": t["plain_to_fp8"] / t["delayed_ours_fused_amax"],
        "codes_agree_with_compiled_fraction": agree,
    }
    rows.append(row)
    print(_fmt_row(row), flush=True)


def probe_accumulator(rows: list[dict]) -> None:
    """Effective accumulator precision: one big product, then K - 1 products 2**-p smaller.

    A[:, 0] = B[0, :] = 256 (product 2**16) and every other product is 2**(16 - p) (exact
    E4M3 powers of two, scales 1), K = 4096. The exact sum is 2**16 (1 + (K - 1) 2**-p); we
    report the fraction of the small addends that the result lost. An accumulator keeping q
    bits after the leading one (truncating) starts losing them once p > q; promotion to fp32
    every 128 of K confines the loss to the K-block holding the big product (127 of 4095
    addends, 3.1%); fp32 accumulation loses nothing until p > 23.
    """
    k = 4096
    results = {}
    paths = [
        ("cuda", "tensorwise"),
        ("triton", "tensorwise"),
        ("cuda", "block"),
        ("triton", "block"),
    ]
    for backend, gran in paths:
        lost = {}
        for p in (8, 10, 12, 13, 14, 15, 16, 18, 20, 24):
            ea, eb = -((p - 16) // 2), (16 - p) // 2  # ea + eb = 16 - p, each in [-9, 8]
            a = torch.full((16, k), 2.0**ea, device="cuda")
            a[:, 0] = 256.0
            b = torch.full((k, 16), 2.0**eb, device="cuda")
            b[0, :] = 256.0
            if gran == "tensorwise":
                ga, gb = "tensorwise", "tensorwise"
                sa = sb = torch.tensor(1.0, device="cuda")
            else:
                ga, gb = "block_1x128", "block_128x128"
                sa = torch.ones(16, k // 128, device="cuda")
                sb = torch.ones(k // 128, 1, device="cuda")
            qa = fp8.quantize(a, "e4m3fn", granularity=ga, scale=sa, backend=backend)
            qb = fp8.quantize(b, "e4m3fn", granularity=gb, scale=sb, backend=backend)
            out = fp8.scaled_mm(qa, qb, out_dtype=torch.float32, backend=backend)
            small = (k - 1) * 2.0 ** (16 - p)
            lost[p] = round((2.0**16 + small - float(out[0, 0])) / small, 4)
        results[f"{backend}/{gran}"] = lost
    row = {"kind": "accumulator_probe", "K": k, "fraction_of_small_addends_lost_by_p": results}
    rows.append(row)
    print(_fmt_row(row), flush=True)


def _fmt_row(row: dict) -> str:
    parts = []
    for key, v in row.items():
        parts.append(f"{key}={v:.4g}" if isinstance(v, float) else f"{key}={v}")
    return " ".join(parts)


def _environment() -> dict:
    import triton

    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except Exception:
        smi = "nvidia-smi unavailable"
    return {
        "gpu": torch.cuda.get_device_name(),
        "nvidia_smi": smi,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "cuda_backend": get_backend("cuda").describe(),
    }


def _markdown(env: dict, rows: list[dict], command: str) -> str:
    lines = ["# NVIDIA backends benchmark", "", f"Command: `{command}`", ""]
    lines += [f"- {k}: {v}" for k, v in env.items()]
    lines.append("")
    by_kind: dict[str, list[dict]] = {}
    for r in rows:
        by_kind.setdefault(r["kind"], []).append(r)
    for kind, rs in by_kind.items():
        keys = [k for k in rs[0] if k != "kind"]
        for r in rs[1:]:
            keys += [k for k in r if k not in keys and k != "kind"]
        lines += [f"## {kind}", "", "| " + " | ".join(keys) + " |"]
        lines.append("|" + "---|" * len(keys))
        for r in rs:
            cells = [
                f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="directory for .md and .json")
    parser.add_argument("--quick", action="store_true", help="fewer and smaller shapes")
    parser.add_argument(
        "--skip", default="", help="comma list: gemm,blockwise,quantize,probe,sweep"
    )
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to benchmark")
        return 0
    torch.manual_seed(0)
    rows: list[dict] = []
    skip = set(filter(None, args.skip.split(",")))
    shapes = GEMM_SHAPES[1:2] + GEMM_SHAPES[3:] if args.quick else GEMM_SHAPES
    if "probe" not in skip:
        probe_accumulator(rows)
    if "quantize" not in skip:
        bench_quantize(QUANT_NUMEL >> (4 if args.quick else 0), rows)
    if "gemm" not in skip:
        bench_gemms(shapes, rows)
    if "blockwise" not in skip:
        bench_blockwise(BLOCK_SHAPES[:1] if args.quick else BLOCK_SHAPES, rows)
    if "sweep" not in skip:
        sweep_triton_configs(rows)
    env = _environment()
    command = "python " + " ".join(sys.argv)
    print(_markdown(env, rows, command))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        tag = "h100" if "H100" in env["gpu"] else env["gpu"].split()[-1].lower()
        (args.out / f"nvidia_{tag}.json").write_text(
            json.dumps({"environment": env, "command": command, "rows": rows}, indent=1)
        )
        (args.out / f"nvidia_{tag}.md").write_text(_markdown(env, rows, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
