"""``quantize_transpose`` on every backend that runs here, against ``quantize`` on the reference.

The contract: ``data`` is bit-identical to ``quantize(x)`` (or the cast with the given scale),
``transposed.data`` is contiguous and bit-identical to ``quantize(x.T.contiguous())`` with the
same scale, and ``amax`` is ``max |x|``. The triton backend's fused kernel runs here in Triton's
interpreter when the process has ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import pytest
import torch

import portable_fp8 as fp8
from portable_fp8.dispatch.registry import list_backends, unavailable_reason
from portable_fp8.errors import Fp8ValueError
from portable_fp8.numerics.cast import codes_of


def _backends_here() -> list[str]:
    return sorted(
        name
        for name, b in list_backends().items()
        if unavailable_reason(b) is None and "cpu" in b.capabilities.devices
    )


def _same(got: torch.Tensor, want: torch.Tensor, fmt: str) -> bool:
    """Equal codes, with every NaN code counted equal (formats with several NaN codes)."""
    values = fp8.get_format(fmt).code_values
    g, w = codes_of(got).long(), codes_of(want).long()
    both_nan = values[g].isnan() & values[w].isnan()
    return bool(((g == w) | both_nan).all())


def _input(rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
    gen = torch.Generator().manual_seed(rows * 1000 + cols)
    x = torch.randn(rows, cols, generator=gen) * torch.logspace(-3, 3, cols)
    return x.to(dtype)


@pytest.mark.parametrize("backend", _backends_here())
@pytest.mark.parametrize("fmt", ["e4m3fn", "e5m2", "e4m3fnuz", "e4m3_gaudi2"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(1, 1), (33, 70), (130, 64)])
def test_matches_quantize(backend, fmt, dtype, shape):
    caps = list_backends()[backend].capabilities
    if fmt not in caps.cast_formats:
        pytest.skip(f"{backend} does not cast to {fmt}")
    x = _input(*shape, dtype)
    q, qt, amax = fp8.quantize_transpose(x, fmt, margin=1, backend=backend)
    want = fp8.quantize(x, fmt, margin=1, backend="reference")
    assert torch.equal(q.scale, want.scale) and torch.equal(qt.scale, want.scale)
    assert _same(q.data, want.data, fmt)
    assert qt.data.is_contiguous() and qt.data.shape == (shape[1], shape[0])
    want_t = fp8.quantize(x.t().contiguous(), fmt, scale=want.scale, backend="reference")
    assert _same(qt.data, want_t.data, fmt)
    assert float(amax) == float(x.float().abs().max())


@pytest.mark.parametrize("backend", _backends_here())
def test_given_scale_measures_amax(backend):
    """Delayed scaling: the given scale is used as is and the amax is measured in the cast."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(40, 96, generator=gen) * 10).to(torch.bfloat16)[:, ::2]  # strided
    x[5, 7] = -1000.0  # saturates at scale 0.5 (E4M3 max 448)
    scale = torch.tensor(0.5)
    q, qt, amax = fp8.quantize_transpose(x, "e4m3fn", scale=scale, backend=backend)
    want = fp8.cast_to_fp8(x, "e4m3fn", scale, backend="reference")
    assert _same(q.data, want, "e4m3fn")
    assert _same(qt.data, want.t().contiguous(), "e4m3fn")
    assert float(q.scale) == 0.5 and float(amax) == 1000.0


@pytest.mark.parametrize("backend", _backends_here())
def test_special_inputs(backend):
    """A zero tensor gets scale 1; a NaN makes the amax NaN and the scale 1 (contract)."""
    zeros = torch.zeros(17, 5)
    q, _, amax = fp8.quantize_transpose(zeros, backend=backend)
    assert float(amax) == 0.0 and float(q.scale) == 1.0
    x = _input(17, 5, torch.float32)
    x[2, 3] = float("nan")
    q, qt, amax = fp8.quantize_transpose(x, backend=backend)
    want = fp8.quantize(x, backend="reference")
    assert amax.isnan() and torch.equal(q.scale, want.scale)
    assert _same(qt.data, want.data.t().contiguous(), "e4m3fn")


def test_bad_input():
    with pytest.raises(Fp8ValueError, match="2-D"):
        fp8.quantize_transpose(torch.ones(4))
    with pytest.raises(Fp8ValueError, match="shape"):
        fp8.quantize_transpose(torch.ones(4, 4), scale=torch.ones(4))
    with pytest.raises(Fp8ValueError, match="block-scale"):
        fp8.quantize_transpose(torch.ones(4, 4), "e8m0fnu")


@pytest.mark.parametrize("backend", _backends_here())
def test_given_amax_gives_the_same_result(backend):
    """A precomputed amax (as a compiler fuses it) gives the bits of the two-pass path;
    its sign is ignored (amax means max |x|)."""
    x = _input(48, 80, torch.bfloat16)
    want_q, want_qt, want_amax = fp8.quantize_transpose(x, "e5m2", margin=2, backend=backend)
    for amax in (want_amax, -want_amax, x.abs().amax()):
        q, qt, _ = fp8.quantize_transpose(x, "e5m2", amax=amax, margin=2, backend=backend)
        assert torch.equal(q.scale, want_q.scale)
        assert torch.equal(codes_of(q.data), codes_of(want_q.data))
        assert torch.equal(codes_of(qt.data), codes_of(want_qt.data))


def test_scale_and_amax_exclusive():
    with pytest.raises(Fp8ValueError, match="not both"):
        fp8.quantize_transpose(torch.ones(4, 4), scale=1.0, amax=torch.tensor(1.0))
