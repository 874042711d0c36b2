"""The per-call caches: capability answers, format lookups, the backend env var.

A :class:`Capabilities` object remembers its ``why_not_*`` answers (on itself, not by the
backend's identity). These tests check that the caches never change what a call does: the
backend chosen follows ``use_backend`` and ``PORTABLE_FP8_BACKEND`` on the very next call, a
replaced ``capabilities`` object gets fresh answers at once, other format pairs are asked on
their own, an undeclared combination raises NotSupportedError with the same message every
time, answers are remembered and the memory is not part of the object's value.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

import portable_fp8 as fp8
from portable_fp8.dispatch import capabilities, registry
from portable_fp8.dispatch.capabilities import Capabilities
from portable_fp8.errors import NotSupportedError

X = torch.linspace(-10, 10, 64).reshape(4, 16)
W = torch.linspace(-3, 3, 128).reshape(16, 8)
F32 = torch.float32


def _q(x, fmt="e4m3fn", backend="reference"):
    return fp8.quantize(x, fmt, backend=backend)


@pytest.fixture
def spied(clean_registry, monkeypatch):
    """The reference and cpu backends, each recording its name when its scaled_mm runs."""
    ran: list[str] = []
    for name in ("reference", "cpu"):
        backend = fp8.get_backend(name)
        inner = backend.scaled_mm

        def spy(*args, _inner=inner, _name=name, **kwargs):
            ran.append(_name)
            return _inner(*args, **kwargs)

        monkeypatch.setattr(backend, "scaled_mm", spy)
    return ran


def _restrict(monkeypatch, name: str, **changes) -> None:
    backend = fp8.get_backend(name)
    monkeypatch.setattr(
        backend, "capabilities", dataclasses.replace(backend.capabilities, **changes)
    )


def _message(call) -> str:
    with pytest.raises(NotSupportedError) as info:
        call()
    return str(info.value)


def test_switching_backend_takes_effect_on_the_next_call(spied, monkeypatch):
    _restrict(monkeypatch, "cpu", gemm_bias=False)
    a, b, bias = _q(X), _q(W), torch.ones(8)
    for _ in range(2):  # the second round runs on cached checks
        with fp8.use_backend("reference"):
            fp8.scaled_mm(a, b, bias=bias)
        with fp8.use_backend("cpu"):
            assert _message(lambda: fp8.scaled_mm(a, b, bias=bias)) == (
                "backend 'cpu' does not support GEMM bias"
            )
            fp8.scaled_mm(a, b)  # without bias the cpu backend runs it
        monkeypatch.setenv(fp8.ENV_VAR, "reference")
        fp8.scaled_mm(a, b, bias=bias)
        monkeypatch.setenv(fp8.ENV_VAR, "cpu")
        assert "GEMM bias" in _message(lambda: fp8.scaled_mm(a, b, bias=bias))
        fp8.scaled_mm(a, b)
        monkeypatch.delenv(fp8.ENV_VAR)
    assert spied == ["reference", "cpu", "reference", "cpu"] * 2


def test_env_var_is_read_on_every_call(clean_registry, monkeypatch):
    for name in ("cpu", "reference", "cpu"):
        monkeypatch.setenv(fp8.ENV_VAR, name)
        assert fp8.select_backend().name == name
    monkeypatch.setenv(fp8.ENV_VAR, "nope")
    with pytest.raises(fp8.UnknownBackendError, match="unknown backend 'nope'"):
        fp8.cast_to_fp8(X)
    monkeypatch.delenv(fp8.ENV_VAR)
    fp8.cast_to_fp8(X)  # back to the choice by device


def test_env_var_read_through_a_replaced_os_environ(clean_registry, monkeypatch):
    monkeypatch.setattr(os, "environ", {**os.environ, fp8.ENV_VAR: "reference"})
    assert registry._env_choice() == "reference"
    assert fp8.select_backend().name == "reference"


def test_other_format_pair_is_checked_on_its_own(clean_registry, monkeypatch):
    _restrict(monkeypatch, "cpu", gemm_formats=frozenset({("e4m3fn", "e4m3fn")}))
    a, b = _q(X), _q(W)
    a5, b5 = _q(X, "e5m2"), _q(W, "e5m2")
    fp8.scaled_mm(a, b, backend="cpu")  # cached as supported
    expected = "backend 'cpu' does not support GEMMs of e5m2 x e4m3fn"
    for _ in range(2):  # failures are not cached: same error, same message, every time
        assert _message(lambda: fp8.scaled_mm(a5, b, backend="cpu")) == expected
    assert _message(lambda: fp8.scaled_mm(a, b5, backend="cpu")) == (
        "backend 'cpu' does not support GEMMs of e4m3fn x e5m2"
    )
    fp8.scaled_mm(a5, b5, backend="reference")  # another backend declares it


def test_changed_capabilities_take_effect_at_once(clean_registry, monkeypatch):
    fp8.quantize(X, "e5m2", granularity="rowwise", backend="cpu")  # cached as supported
    fp8.scaled_mm(_q(X), _q(W), out_dtype=torch.float32, backend="cpu")
    _restrict(monkeypatch, "cpu", granularities=frozenset({"tensorwise"}))
    assert _message(lambda: fp8.quantize(X, "e5m2", granularity="rowwise", backend="cpu")) == (
        "backend 'cpu' does not support rowwise scaling"
    )
    _restrict(monkeypatch, "cpu", out_dtypes=frozenset({torch.bfloat16}))
    assert _message(
        lambda: fp8.scaled_mm(_q(X), _q(W), out_dtype=torch.float32, backend="cpu")
    ) == ("backend 'cpu' does not support GEMM output torch.float32")


def test_cast_checks_cached_per_combination(clean_registry, monkeypatch):
    _restrict(monkeypatch, "cpu", non_saturating=False, cast_formats=frozenset({"e4m3fn"}))
    fp8.cast_to_fp8(X, "e4m3fn", backend="cpu")
    fp8.quantize_transpose(X, "e4m3fn", backend="cpu")
    cases = [
        (lambda: fp8.cast_to_fp8(X, saturate=False, backend="cpu"), "non-saturating casts"),
        (lambda: fp8.quantize_transpose(X, saturate=False, backend="cpu"), "non-saturating casts"),
        (lambda: fp8.cast_to_fp8(X, "e5m2", backend="cpu"), "casts to e5m2"),
        (lambda: fp8.quantize_transpose(X, "e5m2", backend="cpu"), "casts to e5m2"),
        (lambda: fp8.cast_from_fp8(X.to(torch.float8_e5m2), backend="cpu"), "casts from e5m2"),
        (lambda: fp8.cast_to_fp8(X.to("meta"), backend="cpu"), "tensors on device 'meta'"),
    ]
    for _ in range(2):
        for call, feature in cases:
            assert _message(call) == f"backend 'cpu' does not support {feature}"


def test_unknown_formats_still_raise(clean_registry):
    fp8.cast_to_fp8(X, "E4M3FN")
    for _ in range(2):
        with pytest.raises(fp8.UnknownFormatError, match="unknown FP8 format 'e4m3'"):
            fp8.cast_to_fp8(X, "e4m3")
        with pytest.raises(fp8.UnknownFormatError, match="not an FP8 dtype"):
            fp8.cast_to_fp8(X, torch.int8)


def test_cache_after_reload_uses_the_new_backend_objects(clean_registry, monkeypatch):
    fp8.cast_to_fp8(X, "e5m2", backend="cpu")
    registry.reload_backends()
    _restrict(monkeypatch, "cpu", cast_formats=frozenset({"e4m3fn"}))
    assert "casts to e5m2" in _message(lambda: fp8.cast_to_fp8(X, "e5m2", backend="cpu"))


def _caps(**changes) -> Capabilities:
    return dataclasses.replace(fp8.get_backend("cpu").capabilities, **changes)


def test_answers_are_remembered_on_the_object(clean_registry):
    caps = _caps()
    assert caps._answers == {}
    assert caps.why_not_cast("cpu", "e5m2") is None
    assert caps.why_not_gemm("cpu", "e4m3fn", "e4m3fn", "tensorwise", "tensorwise", F32) is None
    assert len(caps._answers) == 2
    caps._answers[next(iter(caps._answers))] = "planted"  # a remembered answer is returned
    assert caps.why_not_cast("cpu", "e5m2") == "planted"


def test_ops_ask_the_current_capabilities_object(clean_registry, monkeypatch):
    backend = fp8.get_backend("cpu")
    fp8.cast_to_fp8(X, "e5m2", backend="cpu")
    assert any(key[0] == "cast" for key in backend.capabilities._answers)
    fresh = _caps(cast_formats=frozenset({"e4m3fn"}))
    monkeypatch.setattr(backend, "capabilities", fresh)
    assert fresh._answers == {}  # replace() gives the copy an empty memory
    assert "casts to e5m2" in _message(lambda: fp8.cast_to_fp8(X, "e5m2", backend="cpu"))
    assert fresh._answers  # the replaced object was asked, and remembers


def test_memory_is_not_part_of_the_value(clean_registry):
    a, b = _caps(), _caps()
    a.why_not_decode("cpu", "e5m2")
    assert a == b and hash(a) == hash(b) and repr(a) == repr(b)
    assert "_answers" not in repr(a) and b._answers == {}
    assert "_answers" not in a.as_dict()


def test_memory_is_bounded(clean_registry, monkeypatch):
    monkeypatch.setattr(capabilities, "_ANSWERS_MAX", 2)
    caps = _caps()
    for fmt in ("e4m3fn", "e5m2", "e4m3fnuz", "e5m2fnuz"):
        assert caps.why_not_cast("cpu", fmt) is None
        assert len(caps._answers) <= 2


def test_failures_are_remembered_and_still_raise_every_time(clean_registry, monkeypatch):
    _restrict(monkeypatch, "cpu", rounding=frozenset({"nearest"}))
    for _ in range(2):
        assert _message(lambda: fp8.cast_to_fp8(X, rounding="stochastic", backend="cpu")) == (
            "backend 'cpu' does not support stochastic rounding"
        )


def test_fp32_scale_tensor_is_kept_as_given():
    s = torch.tensor(4.0)
    assert fp8.quantize(X, scale=s, backend="reference").scale is s
    rowwise = torch.full((4, 1), 2.0)
    assert fp8.quantize(X, granularity="rowwise", scale=rowwise, backend="reference").scale is (
        rowwise
    )
    converted = fp8.quantize(X, scale=torch.tensor([4.0], dtype=torch.float64), backend="cpu")
    assert converted.scale.dtype == torch.float32 and converted.scale.shape == ()
    assert torch.equal(
        converted.data.view(torch.uint8), fp8.quantize(X, scale=s).data.view(torch.uint8)
    )
