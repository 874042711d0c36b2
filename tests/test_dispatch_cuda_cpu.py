"""The ``cuda`` backend's GEMM dispatch in Python, run on CPU tensors.

``torch._scaled_mm`` runs on CPU too, so the backend's layout handling (its tensorwise fast
path, copies into cuBLASLt's layouts, padding of K and N to multiples of 16, 1-element
scales) is checked here without a GPU against ``torch._scaled_mm`` called directly.
"""

from __future__ import annotations

import pytest
import torch

from portable_fp8.errors import Fp8ValueError
from portable_fp8.numerics.formats import E4M3FN
from portable_fp8.numerics.granularity import TENSORWISE, Granularity
from portable_fp8.numerics.tensor import Fp8Tensor


@pytest.fixture
def cuda_backend():
    """A fresh CudaBackend object (not the registry's); its Python runs on CPU tensors."""
    pytest.importorskip("triton")
    from portable_fp8.backends.nvidia.cuda import CudaBackend

    return CudaBackend()


def _codes(*shape: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen) * 8).to(torch.float8_e4m3fn)


def _raw(qa: torch.Tensor, qb: torch.Tensor, sa: float, sb: float) -> torch.Tensor:
    """torch._scaled_mm on cuBLASLt's layouts (A row-major, B column-major), inv scales."""
    return torch._scaled_mm(
        qa.contiguous(),
        qb.t().contiguous().t(),
        torch.tensor(1 / sa),
        torch.tensor(1 / sb),
        out_dtype=torch.bfloat16,
    )


@pytest.mark.parametrize("b_layout", ["column", "row"])
def test_tensorwise_matches_raw_scaled_mm(cuda_backend, b_layout):
    m, k, n = 16, 64, 32
    qa = _codes(m, k, seed=0)
    qb = _codes(n, k, seed=1).t() if b_layout == "column" else _codes(k, n, seed=1)
    sa, sb = torch.tensor(2.0), torch.tensor(0.5)
    a, b = Fp8Tensor(qa, sa, E4M3FN, TENSORWISE), Fp8Tensor(qb, sb, E4M3FN, TENSORWISE)
    got = cuda_backend.scaled_mm(a, b, out_dtype=torch.bfloat16, bias=None, c=None)
    assert torch.equal(got, _raw(qa, qb, 2.0, 0.5))


@pytest.mark.parametrize("scale_shape", [(1,), (1, 1)])
def test_a_tensorwise_scale_is_0d(scale_shape):
    """One-element scales of another shape never reach a backend: Fp8Tensor refuses them."""
    with pytest.raises(Fp8ValueError, match=r"Fp8Tensor.scale has shape .* needs \(\)"):
        Fp8Tensor(_codes(16, 64, seed=0), torch.full(scale_shape, 2.0), E4M3FN, TENSORWISE)


def test_tensorwise_padding_and_an_equal_granularity_object(cuda_backend):
    m, k, n = 16, 40, 24  # K and N not multiples of 16: padded
    qa, qb = _codes(m, k, seed=2), _codes(n, k, seed=3).t()
    fresh = Granularity("tensorwise", -1, -1)  # equal to TENSORWISE, not the same object
    for gran in (TENSORWISE, fresh):
        a = Fp8Tensor(qa, torch.tensor(1.0), E4M3FN, gran)
        b = Fp8Tensor(qb, torch.tensor(1.0), E4M3FN, gran)
        got = cuda_backend.scaled_mm(a, b, out_dtype=torch.bfloat16, bias=None, c=None)
        want = qa.float() @ qb.float()
        assert got.shape == (m, n)
        torch.testing.assert_close(got.float(), want, rtol=1e-2, atol=1e-2)


def test_tensorwise_with_bias_and_c(cuda_backend):
    m, k, n = 16, 64, 32
    qa, qb = _codes(m, k, seed=4), _codes(n, k, seed=5).t()
    a = Fp8Tensor(qa, torch.tensor(1.0), E4M3FN, TENSORWISE)
    b = Fp8Tensor(qb, torch.tensor(1.0), E4M3FN, TENSORWISE)
    bias, c = torch.linspace(-1, 1, n), torch.ones(m, n)
    got = cuda_backend.scaled_mm(a, b, out_dtype=torch.float32, bias=bias, c=c)
    want = (
        torch._scaled_mm(qa, qb, torch.tensor(1.0), torch.tensor(1.0), out_dtype=torch.float32)
        + bias
        + c
    )
    assert torch.equal(got, want)


@pytest.mark.parametrize("fast_accum", [False, True])
@pytest.mark.parametrize("shape", [(16, 64, 32), (16, 40, 24)])  # fast path; padded K and N
def test_fast_accum_reaches_torch_scaled_mm(cuda_backend, monkeypatch, fast_accum, shape):
    m, k, n = shape
    flags = []

    def recorder(original):
        def recording(*args, **kwargs):
            flags.append(kwargs["use_fast_accum"])
            return original(*args, **kwargs)

        return recording

    # Whichever entry the backend calls (the public one where torch has it) records the flag.
    monkeypatch.setattr(torch, "_scaled_mm", recorder(torch._scaled_mm))
    if hasattr(torch.nn.functional, "scaled_mm"):
        monkeypatch.setattr(
            torch.nn.functional, "scaled_mm", recorder(torch.nn.functional.scaled_mm)
        )
    qa, qb = _codes(m, k, seed=4), _codes(n, k, seed=5).t()
    a = Fp8Tensor(qa, torch.tensor(2.0), E4M3FN, TENSORWISE)
    b = Fp8Tensor(qb, torch.tensor(0.5), E4M3FN, TENSORWISE)
    kw = {"fast_accum": True} if fast_accum else {}
    cuda_backend.scaled_mm(a, b, out_dtype=torch.bfloat16, bias=None, c=None, **kw)
    # One call; two records where the public entry has no CPU kernel (torch 2.11) and the
    # private one answers.
    assert flags and set(flags) == {fast_accum}
    caps = cuda_backend.capabilities
    assert caps.fast_accumulator is not None and caps.fast_accumulator != caps.accumulator
