"""torch's scaled matrix product, both entries: the public ``torch.nn.functional.scaled_mm``
(used where torch has it) and the private ``torch._scaled_mm`` (older torch). CPU torch 2.13
has both, so each path runs here and they must agree bit for bit."""

from __future__ import annotations

import pytest
import torch
from portable_fp8.backends import _torch_scaled_mm as tsm

import portable_fp8 as fp8


def _public_runs_on_cpu() -> bool:
    """torch 2.11 has the public entry with a CUDA-only kernel; 2.13 runs it on CPU."""
    if not tsm.has_public_scaled_mm():
        return False
    a = torch.ones(16, 16).to(torch.float8_e4m3fn)
    f, one = torch.nn.functional, torch.tensor(1.0)
    try:
        f.scaled_mm(a, a.t(), one, f.ScalingType.TensorWise, one, f.ScalingType.TensorWise)
    except NotImplementedError:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not _public_runs_on_cpu(), reason="this torch has no torch.nn.functional.scaled_mm on CPU"
)


def _operands(gen: torch.Generator):
    a = (torch.randn(32, 64, generator=gen) * 4).to(torch.float8_e4m3fn)
    b = (torch.randn(48, 64, generator=gen) * 4).to(torch.float8_e4m3fn).t()
    return a, b


@pytest.mark.parametrize("rowwise", [False, True])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_public_and_private_entries_agree_bit_for_bit(monkeypatch, rowwise, out_dtype):
    gen = torch.Generator().manual_seed(5)
    a, b = _operands(gen)
    if rowwise:
        sa, sb = torch.rand(32, 1, generator=gen) + 0.5, torch.rand(1, 48, generator=gen) + 0.5
    else:
        sa, sb = torch.tensor(0.25), torch.tensor(3.0)
    calls = []
    public = torch.nn.functional.scaled_mm
    monkeypatch.setattr(
        torch.nn.functional, "scaled_mm", lambda *a, **k: calls.append(1) or public(*a, **k)
    )
    got = tsm.torch_scaled_mm(a, b, sa, sb, out_dtype=out_dtype)
    assert calls == [1]  # the public entry ran
    monkeypatch.delattr(torch.nn.functional, "scaled_mm")
    assert not tsm.has_public_scaled_mm()
    private = tsm.torch_scaled_mm(a, b, sa, sb, out_dtype=out_dtype)
    assert got.dtype == out_dtype and torch.equal(got, private)
    want = torch._scaled_mm(a, b, sa, sb, out_dtype=out_dtype)
    assert torch.equal(private, want)


def test_cpu_backend_gemm_is_the_same_on_either_entry(monkeypatch):
    """The cpu backend's native GEMM goes through the helper; removing the public entry
    (as on older torch) changes no bit of its result."""
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(32, 64, generator=gen)
    w = torch.randn(48, 64, generator=gen)
    xq = fp8.quantize(x, "e4m3fn", granularity="rowwise", backend="cpu")
    wq = fp8.quantize(w, "e4m3fn", granularity="rowwise", backend="cpu")
    calls = []
    public = torch.nn.functional.scaled_mm
    monkeypatch.setattr(
        torch.nn.functional, "scaled_mm", lambda *a, **k: calls.append(1) or public(*a, **k)
    )
    got = fp8.scaled_mm(xq, wq.t(), out_dtype=torch.float32, backend="cpu")
    assert calls, "the cpu backend did not use torch.nn.functional.scaled_mm"
    monkeypatch.delattr(torch.nn.functional, "scaled_mm")
    again = fp8.scaled_mm(xq, wq.t(), out_dtype=torch.float32, backend="cpu")
    assert torch.equal(got, again)


def test_a_public_entry_without_a_kernel_for_the_device_falls_back(monkeypatch):
    """As on torch 2.11 (public op CUDA-only): the private entry answers, bit-identically,
    and the public one is not tried again for that device type."""
    gen = torch.Generator().manual_seed(3)
    a, b = _operands(gen)
    sa, sb = torch.tensor(0.5), torch.tensor(2.0)
    calls = []

    def no_kernel(*args, **kwargs):
        calls.append(1)
        raise NotImplementedError("Could not run 'aten::_scaled_mm_v2' with arguments from CPU")

    monkeypatch.setattr(torch.nn.functional, "scaled_mm", no_kernel)
    monkeypatch.setattr(tsm, "_PUBLIC_MISSING_ON", set())
    want = torch._scaled_mm(a, b, sa, sb, out_dtype=torch.float32)
    for _ in range(2):
        assert torch.equal(tsm.torch_scaled_mm(a, b, sa, sb, out_dtype=torch.float32), want)
    assert calls == [1] and {"cpu"} == tsm._PUBLIC_MISSING_ON
