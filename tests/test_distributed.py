"""Amax reduction across ranks (gloo on CPU, 2 and 4 processes spawned by the test).

References are independent of the reduction code: one process running the same layers on
the concatenated batch (or the full tensor) with no reduction at all. The MAX of amaxes is
exact, so the comparisons are bit-exact (``torch.equal``), no tolerance.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import portable_fp8 as fp8
from portable_fp8.errors import Fp8ValueError

_GLOO = dist.is_available() and dist.is_gloo_available()
needs_gloo = pytest.mark.skipif(
    not _GLOO, reason="needs torch.distributed with the gloo backend (not built into this torch)"
)

_B, _IN, _HID, _OUT = 3, 16, 32, 8  # rows per rank, feature sizes


def _model(recipe) -> torch.nn.Sequential:
    torch.manual_seed(0)
    m = torch.nn.Sequential(
        torch.nn.Linear(_IN, _HID), torch.nn.ReLU(), torch.nn.Linear(_HID, _OUT)
    )
    return fp8.nn.convert(m, recipe=recipe)


def _global_batch(step: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same (x, target) on every rank; each rank's rows have their own magnitude, which
    changes from step to step, so the ranks' amaxes differ."""
    g = torch.Generator().manual_seed(100 + step)
    mag = torch.tensor([float(2 ** ((r + step) % world)) for r in range(world)])
    mag = mag.repeat_interleave(_B)[:, None]
    x = torch.randn(world * _B, _IN, generator=g) * mag
    t = torch.randn(world * _B, _OUT, generator=g) * mag.flip(0)
    return x, t


def _fp8_layers(m):
    return [mod for mod in m if isinstance(mod, fp8.nn.Linear)]


def _gathered(t: torch.Tensor, world: int) -> list[torch.Tensor]:
    out = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(out, t.contiguous())
    return out


def _check_delayed(rank: int, world: int) -> None:
    """Data parallelism: reduced histories equal the one-process histories of the global
    batch on every rank; without reduction, the ranks' histories differ."""
    recipe = fp8.nn.DelayedScaling(history_len=4)
    dp, off = _model(recipe), _model(fp8.nn.DelayedScaling(history_len=4, reduce_amax=False))
    ref = _model(fp8.nn.DelayedScaling(history_len=4, reduce_amax=False))
    differs = False
    steps = 5
    for step in range(steps):
        x, t = _global_batch(step, world)
        rows = slice(rank * _B, (rank + 1) * _B)
        xl, tl = x[rows], t[rows]
        if step == steps - 1:  # the last rank has no tokens; the reference sees none of its
            x, t = x[: (world - 1) * _B], t[: (world - 1) * _B]
            if rank == world - 1:
                xl, tl = xl[:0], tl[:0]
        for m in (dp, off):
            m.zero_grad()
            (m(xl) * tl).sum().backward()
            for p in m.parameters():  # data-parallel gradients, reduced by hand
                dist.all_reduce(p.grad)
        ref.zero_grad()
        (ref(x) * t).sum().backward()
        for a, b, c in zip(_fp8_layers(dp), _fp8_layers(ref), _fp8_layers(off), strict=True):
            assert torch.equal(a.amax_history, b.amax_history), (rank, step)
            assert torch.equal(a.scale, b.scale), (rank, step)
            hist = _gathered(c.amax_history, world)
            differs |= any(not torch.equal(hist[0], h) for h in hist[1:])
    assert differs, "without reduction the ranks' histories should differ"


def _check_current(rank: int, world: int) -> None:
    """Sequence parallelism: with reduce_amax each rank's shard of x and dy is cast with the
    scale of the whole tensor, to the same codes as the one-process cast of the whole."""
    x, dy = _global_batch(0, world)
    rows = slice(rank * _B, (rank + 1) * _B)
    casts: dict[str, dict[str, object]] = {"sp": {}, "full": {}, "off": {}}
    for name, red in (("sp", True), ("full", False), ("off", False)):
        torch.manual_seed(0)
        layer = fp8.nn.Linear(_IN, _OUT, recipe=fp8.nn.CurrentScaling(reduce_amax=red))
        layer._fp8_probe = lambda role, hp, q, store=casts[name]: store.setdefault(role, q)
        xi, dyi = (x, dy) if name == "full" else (x[rows], dy[rows])
        (layer(xi) * dyi).sum().backward()
    for role in ("input", "grad_output"):
        sp, full, off = casts["sp"][role], casts["full"][role], casts["off"][role]
        assert torch.equal(sp.scale, full.scale), (rank, role)
        assert torch.equal(sp.data.view(torch.uint8), full.data.view(torch.uint8)[rows])
        # The smallest rows (x: rank 0's, dy: the last rank's) give another scale alone.
        if rank == (0 if role == "input" else world - 1):
            assert not torch.equal(off.scale, full.scale), role


def _worker(rank: int, world: int, init: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        _check_delayed(rank, world)
        _check_current(rank, world)
    finally:
        dist.destroy_process_group()


@needs_gloo
@pytest.mark.parametrize("world", [2, 4])
def test_amax_reduction_across_ranks(world, tmp_path):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(world, f"file://{tmp_path / 'rdzv'}"), nprocs=world, join=True)


def test_current_reduce_needs_tensorwise():
    with pytest.raises(Fp8ValueError, match="tensorwise"):
        fp8.nn.CurrentScaling(granularity="rowwise", reduce_amax=True)


@needs_gloo
def test_current_reduce_needs_initialised_process_group():
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    layer = fp8.nn.Linear(_IN, _OUT, recipe=fp8.nn.CurrentScaling(reduce_amax=True))
    with pytest.raises(Fp8ValueError, match="init_process_group"):
        layer(torch.randn(2, _IN))


def test_delayed_without_process_group_reduces_nothing():
    """The default reduce_amax=True is a no-op where torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    a = _model(fp8.nn.DelayedScaling(history_len=4))
    b = _model(fp8.nn.DelayedScaling(history_len=4, reduce_amax=False))
    x, _ = _global_batch(0, 2)
    a(x).sum().backward()
    b(x).sum().backward()
    for la, lb in zip(_fp8_layers(a), _fp8_layers(b), strict=True):
        assert torch.equal(la.amax_history, lb.amax_history)
