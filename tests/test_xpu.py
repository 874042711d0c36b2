"""The ``xpu`` backend's declarations and availability (no Intel GPU here: it never runs)."""

from __future__ import annotations

import pytest
import torch
from portable_fp8.backends import xpu
from portable_fp8.backends.xpu import XpuBackend

import portable_fp8 as fp8

pytestmark = pytest.mark.skipif(
    hasattr(torch, "xpu") and torch.xpu.is_available(), reason="an XPU is present"
)


def test_unavailable_without_an_xpu_says_why():
    reason = XpuBackend().unavailable_reason()
    if xpu._torch_version() < xpu.MIN_TORCH:
        assert "needs torch >= 2.10" in reason
    else:
        assert reason == "no Intel GPU is visible to torch (torch.xpu.is_available() is False)"


@pytest.mark.parametrize("version", ["2.9.1", "2.8.0+cpu"])
def test_torch_older_than_2_10_has_no_xpu_scaled_mm(monkeypatch, version):
    monkeypatch.setattr(torch, "__version__", version)
    reason = XpuBackend().unavailable_reason()
    assert reason is not None and f"torch {version} has no torch._scaled_mm for XPU" in reason


def test_declares_xpu_device_and_standard_gemm_granularities():
    caps = XpuBackend().capabilities
    assert caps.devices == {"xpu"}
    assert {("tensorwise", "tensorwise"), ("rowwise", "columnwise")} <= caps.gemm_granularities
    assert {"e4m3fn", "e5m2"} <= caps.cast_formats


def test_registered_and_refused_with_its_reason(clean_registry):
    assert "xpu" in clean_registry.list_backends()
    with pytest.raises(fp8.BackendUnavailableError, match="xpu"):
        fp8.cast_to_fp8(torch.ones(2), backend="xpu")
