"""CPU overhead of FP8 telemetry (portable_fp8.nn.telemetry) on a small MLP training step.

One step: forward, MSE loss, backward, SGD step, ``telemetry.step()``. The model is
``Linear(d, h) -> ReLU -> Linear(h, h) -> ReLU -> Linear(h, d)`` (FP8 Linears, current
tensorwise scaling, the ``cpu`` backend), fp32, on ``tokens`` rows. Variants, each on a fresh
copy of the same weights, interleaved round by round so that machine load hits all alike:

* ``off``: no telemetry;
* ``every=100``: attached, sampling every 100th step (the step of each variant's round that
  is sampled is included, so the mean shows the amortised cost);
* ``every=1``: every step sampled;
* ``every=1+what_if``: every step sampled, with the 7 default what-if casts.

Prints the median and mean step time per variant and its ratio to ``off``. Run with one
thread (``OMP_NUM_THREADS=1``), as the figures in docs/telemetry.md were::

    OMP_NUM_THREADS=1 python benchmarks/bench_telemetry.py --steps 200
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
import warnings

import torch
from torch import nn

import portable_fp8.nn as pn
from portable_fp8.nn import telemetry

_VARIANTS = {
    "off": None,
    "every=100": {"every": 100},
    "every=1": {"every": 1},
    "every=1+what_if": {"every": 1, "what_if": True},
}


def _model(d: int, h: int) -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, d))
    return pn.convert(m, recipe=pn.CurrentScaling(), backend="cpu")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--h", type=int, default=512)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--steps", type=int, default=200, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=5)
    args = p.parse_args()

    base = _model(args.d, args.h)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.tokens, args.d, generator=g)
    y = torch.randn(args.tokens, args.d, generator=g)
    runs = {}
    for name, kw in _VARIANTS.items():
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        tel = telemetry.enable(model, **kw) if kw is not None else None
        runs[name] = (model, opt, tel, [])

    def one_step(model, opt, tel) -> float:
        start = time.perf_counter()
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if tel is not None:
            tel.step()
        return time.perf_counter() - start

    warnings.simplefilter("ignore", telemetry.Fp8TelemetryWarning)
    for _ in range(args.warmup):
        for model, opt, tel, _times in runs.values():
            one_step(model, opt, tel)
    for _ in range(args.steps):  # interleaved: one step of each variant per round
        for model, opt, tel, times in runs.values():
            times.append(one_step(model, opt, tel))

    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"threads {torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})"
    )
    print(f"MLP {args.d}-{args.h}-{args.h}-{args.d}, {args.tokens} tokens, fp32, cpu backend, "
          f"{args.steps} timed steps per variant")  # fmt: skip
    off = statistics.median(runs["off"][3])
    off_mean = statistics.fmean(runs["off"][3])
    print("| variant | median ms | x off | mean ms | x off |")
    print("|---|---|---|---|---|")
    for name, (_m, _o, _t, times) in runs.items():
        med, mean = statistics.median(times), statistics.fmean(times)
        print(f"| {name} | {med * 1e3:.2f} | {med / off:.2f} | {mean * 1e3:.2f} | "
              f"{mean / off_mean:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
