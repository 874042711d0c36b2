"""Tile sizes of the NVIDIA backends' cast + transpose kernel, and the paths it replaces.

For the activation and weight shapes of an LLM MLP, times ``quantize_transpose`` (current
scaling: one amax pass, then one pass that casts and stores codes and transposed codes) with
several (BLOCK_R, BLOCK_C, num_warps) tiles, against

* ``quantize + .t().contiguous()``: our flat cast, then PyTorch's one-byte transposed copy;
* ``torch.compile`` of amax, scale, cast and transposed cast (what an inductor-fused recipe
  runs);
* the floor: bytes moved (read x twice, write two FP8 copies: 6 bytes per bf16 element) over
  the bandwidth of a device-to-device copy measured here.

Every variant is checked bit for bit against the first tile's output on random data.
Median of ``do_bench`` (CUDA events), warm-up excluded. Usage: ``python
benchmarks/tune_cast_transpose.py`` on a CUDA machine.
"""

from __future__ import annotations

import torch
import triton.testing

import portable_fp8 as fp8
from portable_fp8.numerics.formats import E4M3FN

_TILES = [(32, 32, 4), (64, 64, 4), (64, 64, 8), (64, 128, 4), (128, 64, 4), (128, 128, 8)]
_SHAPES = [(16384, 14336), (16384, 4096), (14336, 4096)]


def _ms(fn) -> float:
    return triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median")


def main() -> None:
    import argparse

    import portable_fp8.backends.nvidia._casts as casts  # the tile constant lives here

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiles", default=None, help="e.g. 64x64x4,64x128x4 (default: six)")
    args = p.parse_args()
    tiles = _TILES
    if args.tiles:
        tiles = [tuple(int(v) for v in t.split("x")) for t in args.tiles.split(",")]

    backend = fp8.get_backend("cuda")
    copy_src = torch.randint(0, 256, (2**28,), dtype=torch.uint8, device="cuda")
    copy_dst = torch.empty_like(copy_src)
    copy_gbs = 2 * copy_src.numel() / _ms(lambda: copy_dst.copy_(copy_src)) / 1e6
    print(f"device copy bandwidth: {copy_gbs:.0f} GB/s (read + write)")

    @torch.compile
    def compiled(x):
        amax = x.abs().amax().float()
        scale = torch.where(amax > 0, 448.0 / amax, 1.0)
        y = (x.float() * scale).clamp(-448, 448).to(torch.float8_e4m3fn)
        yt = (x.t().float() * scale).clamp(-448, 448).to(torch.float8_e4m3fn).contiguous()
        return y, yt, scale

    print("| shape | variant | us | GB/s (6 B/elem) | of floor |")
    print("| --- | --- | ---: | ---: | ---: |")
    for rows, cols in _SHAPES:
        x = torch.randn(rows, cols, device="cuda", dtype=torch.bfloat16)
        n = x.numel()
        floor_us = 6 * n / copy_gbs / 1e3
        results = {}
        want = None
        for tile in tiles:
            casts._TRANSPOSE_TILE = tile
            casts._transpose_constants.cache_clear()
            q, qt, _ = backend.quantize_transpose(
                x, E4M3FN, None, None, margin=0, power_of_two=False, saturate=True
            )
            got = (q.data.view(torch.uint8), qt.data.view(torch.uint8))
            if want is None:
                want = got
                assert torch.equal(got[1], got[0].t().contiguous()), "transpose mismatch"
            assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True)), tile
            results[f"tile {tile}"] = _ms(
                lambda x=x: backend.quantize_transpose(
                    x, E4M3FN, None, None, margin=0, power_of_two=False, saturate=True
                )
            )

        def two_step(x=x):
            t = fp8.quantize(x, "e4m3fn", backend="cuda")
            return t.data.t().contiguous()

        results["quantize + .t().contiguous()"] = _ms(two_step)
        y, yt, _ = compiled(x)
        differ = int((y.view(torch.uint8) != want[0]).sum())
        print(f"{rows}x{cols}: torch.compile codes differing from ours: {differ} of {n}")
        results["torch.compile amax+cast+cast^T"] = _ms(lambda x=x: compiled(x))
        for name, ms in results.items():
            us = ms * 1e3
            print(f"| {rows}x{cols} | {name} | {us:.0f} | {6 * n / us / 1e3:.0f} | "
                  f"{floor_us / us:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
