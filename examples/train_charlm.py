"""Train a small GPT-style character (byte) language model in high precision and in FP8.

The corpus is the Python standard library's own ``*.py`` files (present on every machine
with Python), read as bytes in sorted path order (vocabulary: the 256 byte values). Both
runs use the same seed, so the same initial weights, and the same batch order; the FP8 run
differs only in that every Linear of the transformer blocks is converted with
:func:`portable_fp8.nn.convert` (the output head stays in high precision).

Examples::

    # CI-sized, on the CPU backend, float32 baseline:
    python examples/train_charlm.py --preset tiny --backend cpu --out runs/tiny
    # H100, cuda backend, bf16 autocast baseline, until the loss flattens:
    python examples/train_charlm.py --preset gpu --device cuda --dtype bf16 --backend cuda \
        --out runs/h100

Each run writes ``results.json`` (losses per step, eval losses, versions, the command) and
``loss.png`` (both curves in one plot) under ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import sysconfig
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import portable_fp8 as fp8
import portable_fp8.nn as fp8nn

__all__ = ["Config", "PRESETS", "GPT", "load_corpus", "train", "plot"]


@dataclass(frozen=True)
class Config:
    """Model, data and optimisation settings of one run."""

    n_layer: int = 2
    n_head: int = 2
    d_model: int = 64
    context: int = 64
    batch: int = 16
    steps: int = 300
    lr: float = 3e-3
    warmup: int = 20
    weight_decay: float = 0.1
    corpus_bytes: int = 1 << 20
    eval_batches: int = 8
    eval_every: int = 100
    seed: int = 0


PRESETS: dict[str, Config] = {
    "tiny": Config(),
    "gpu": Config(
        n_layer=6,
        n_head=6,
        d_model=384,
        context=256,
        batch=64,
        steps=1500,
        lr=2e-3,
        warmup=100,
        corpus_bytes=24 << 20,
        eval_batches=16,
        eval_every=250,
    ),
}


def _stdlib_sources() -> list[str]:
    """The standard library's .py files (packages included, installed add-ons excluded),
    in sorted path order."""
    stdlib = sysconfig.get_paths()["stdlib"]
    skip = {"site-packages", "dist-packages", "__pycache__"}
    paths = []
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in skip)
        paths += [os.path.join(root, f) for f in files if f.endswith(".py")]
    return sorted(paths)


def load_corpus(n_bytes: int) -> torch.Tensor:
    """The first ``n_bytes`` bytes of the stdlib's .py files, concatenated in path order."""
    chunks, total = [], 0
    for path in _stdlib_sources():
        with open(path, "rb") as f:
            data = f.read()
        chunks.append(data)
        total += len(data)
        if total >= n_bytes:
            break
    blob = b"".join(chunks)[:n_bytes]
    return torch.frombuffer(bytearray(blob), dtype=torch.uint8).to(torch.int64)


class _Block(nn.Module):
    def __init__(self, d: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class GPT(nn.Module):
    """A byte-level GPT: token and position embeddings, pre-LN blocks, a linear head."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.tok = nn.Embedding(256, cfg.d_model)
        self.pos = nn.Embedding(cfg.context, cfg.d_model)
        self.blocks = nn.ModuleList(_Block(cfg.d_model, cfg.n_head) for _ in range(cfg.n_layer))
        self.ln = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, 256, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.tok(idx) + self.pos(pos)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


def _batch(data, cfg: Config, gen: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    ix = torch.randint(len(data) - cfg.context - 1, (cfg.batch,), generator=gen)
    rows = torch.stack([data[i : i + cfg.context + 1] for i in ix.tolist()])
    rows = rows.to(device)
    return rows[:, :-1], rows[:, 1:]


def _lr(step: int, cfg: Config) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def train(
    cfg: Config,
    *,
    fp8_recipe: fp8nn.Recipe | None = None,
    backend: str | None = None,
    device: str = "cpu",
    dtype: str = "fp32",
    compile: bool = False,
    log_every: int = 0,
) -> dict:
    """One training run; FP8 if ``fp8_recipe`` is given. Returns losses and timings.

    ``dtype="bf16"`` runs the model under bf16 autocast (both runs), ``"fp32"`` without.
    The returned ``eval`` is the mean loss over ``cfg.eval_batches`` fixed held-out batches.
    """
    torch.manual_seed(cfg.seed)
    data = load_corpus(cfg.corpus_bytes)
    split = int(0.9 * len(data))
    train_data, val_data = data[:split], data[split:]
    model = GPT(cfg).to(device)
    report = None
    if fp8_recipe is not None:
        model = fp8nn.convert(
            model, fp8_recipe, backend=backend, module_filter_fn=lambda m, fqn: fqn != "head"
        )
        report = model.fp8_conversion
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step_fn = torch.compile(model) if compile else model
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bf16")
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    val_gen = torch.Generator().manual_seed(cfg.seed + 2)
    val = [_batch(val_data, cfg, val_gen, device) for _ in range(cfg.eval_batches)]

    def evaluate() -> float:
        model.eval()
        with torch.no_grad(), autocast:
            losses = [
                F.cross_entropy(step_fn(x).float().flatten(0, 1), y.flatten()) for x, y in val
            ]
        model.train()
        return float(torch.stack(losses).mean())

    losses, evals = [], []
    start = time.perf_counter()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg)
        x, y = _batch(train_data, cfg, gen, device)
        with autocast:
            logits = step_fn(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.detach().item())
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            evals.append((step + 1, evaluate()))
        if log_every and (step + 1) % log_every == 0:
            rate = (time.perf_counter() - start) / (step + 1) * 1e3
            print(f"step {step + 1:5d} loss {losses[-1]:.4f} ({rate:.1f} ms/step)", flush=True)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    evals.append((cfg.steps, evaluate()))
    return {
        "losses": losses,
        "evals": evals,
        "eval": evals[-1][1],
        "seconds": seconds,
        "converted": report.converted if report else [],
        "skipped": report.skipped if report else {},
        "backend": report.backend if report else None,
    }


def _smooth(xs: list[float], k: int) -> list[float]:
    out, acc = [], 0.0
    for i, x in enumerate(xs):
        acc += x
        if i >= k:
            acc -= xs[i - k]
        out.append(acc / min(i + 1, k))
    return out


def plot(results: dict, path: str, title: str) -> None:
    """Training-loss curves (moving average) and eval points of every run in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, rel) = plt.subplots(
        2, 1, figsize=(8, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    curves = {}
    for name, run in results["runs"].items():
        k = max(1, len(run["losses"]) // 50)
        curves[name] = _smooth(run["losses"], k)
        (line,) = ax.plot(curves[name], label=f"{name} (train, mean of {k})")
        steps, values = zip(*run["evals"], strict=True)
        ax.plot(steps, values, "o--", color=line.get_color(), label=f"{name} (eval)")
    ax.set_ylabel("cross-entropy (nats/byte)")
    ax.set_title(title)
    ax.set_ylim(top=min(3.5, ax.get_ylim()[1]))
    ax.grid(alpha=0.3)
    ax.legend()
    names = list(curves)
    if len(names) == 2:
        a, b = curves[names[0]], curves[names[1]]
        rel.plot([100 * (y / x - 1) for x, y in zip(a, b, strict=False)], color="k")
        rel.axhline(0, color="grey", lw=0.5)
        rel.set_ylabel(f"{names[1]} vs\n{names[0]} (%)", fontsize=8)
        rel.set_ylim(-3, 3)
        rel.grid(alpha=0.3)
    rel.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


_RECIPES = {
    "tensorwise": lambda: fp8nn.CurrentScaling(),
    "rowwise": lambda: fp8nn.CurrentScaling(granularity="rowwise"),
    "delayed": lambda: fp8nn.DelayedScaling(),
    "blockwise": lambda: fp8nn.Blockwise(),
}


def _versions() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "portable_fp8": fp8.__version__}  # fmt: skip
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--steps", type=int, help="override the preset's step count")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--backend", default=None, help="FP8 backend (default: the registry's)")
    p.add_argument("--recipe", choices=sorted(_RECIPES), default="tensorwise")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--out", default="runs/charlm")
    p.add_argument("--log-every", type=int, default=100)
    args = p.parse_args(argv)
    cfg = PRESETS[args.preset]
    if args.steps:
        cfg = dataclasses.replace(cfg, steps=args.steps)
    os.makedirs(args.out, exist_ok=True)
    common = dict(device=args.device, dtype=args.dtype, compile=args.compile,
                  log_every=args.log_every)  # fmt: skip
    runs: dict[str, dict] = {}
    label = f"fp8 {args.recipe} ({args.backend or 'auto'})"
    results = {
        "command": "python "
        + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "config": dataclasses.asdict(cfg),
        "versions": _versions(),
        "backend": fp8.select_backend(args.backend, args.device).describe(),
        "runs": runs,
    }

    def save() -> None:  # after each run, so a time limit keeps what finished
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(results, f, indent=1)

    print(f"== {args.dtype} baseline", flush=True)
    runs[args.dtype] = train(cfg, **common)
    save()
    print(f"== {label}", flush=True)
    runs[label] = train(cfg, fp8_recipe=_RECIPES[args.recipe](), backend=args.backend, **common)
    base, ours = runs[args.dtype]["eval"], runs[label]["eval"]
    results["final_eval"] = {args.dtype: base, label: ours, "relative_difference": ours / base - 1}
    save()
    print(json.dumps(results["final_eval"]), flush=True)
    try:
        plot(
            results,
            os.path.join(args.out, "loss.png"),
            f"char-LM, {args.preset}: {label} vs {args.dtype}",
        )
    except ImportError:
        print("matplotlib missing: no plot (pip install 'portable-fp8[examples]')", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
