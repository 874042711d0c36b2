"""Shared fixtures and the tests' own, independent model of FP8 rounding.

``reference_round`` below is written from the contract (docs/contract.md) in float64 numpy,
without looking at the emulator's integer algorithm: it rounds to the nearest value of a
format's 256-entry decode table (ties to the even code; E8M0 ties up), then applies the
overflow table and the sign rules. The emulator rounds by integer shifts of fp32 bit
patterns, so agreement between the two is evidence, not a tautology. The decode table
itself is checked against ml_dtypes and the format specifications in test_formats.py.

Why float64 is exact here: every fp32 value and every FP8 value is a float64 value, and for
neighbours ``lo <= a <= hi`` of an fp32 ``a`` the differences ``a - lo`` and ``hi - a`` span
at most 24 + 4 significant bits (or are ``a`` itself when ``lo == 0``), so they are computed
exactly; ``hi - lo`` is a power of two, so ``(a - lo) / (hi - lo)`` and its product with
``2**32`` are exact too.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from portable_fp8.dispatch import registry
from portable_fp8.numerics.formats import Format, NanEncoding

__all__ = ["reference_round", "format_grid", "assert_same_codes"]


def format_grid(fmt: Format) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative finite values of ``fmt`` with their codes, ascending, plus one more point.

    The extra last point is the next value of the format's grid above ``max`` (the value an
    unbounded exponent range would have), with the next code: a result rounded there has
    overflowed. Its spacing above ``max`` is ``2**(floor(log2 max) - mantissa_bits)``.
    """
    table = fmt.code_values.numpy()
    codes = np.arange(128 if fmt.signed else 256)
    values = table[codes]
    keep = np.isfinite(values)
    codes, values = codes[keep], values[keep]
    assert np.all(np.diff(values) > 0), "positive codes must be ordered by value"
    assert values[-1] == fmt.max
    step = 2.0 ** (np.floor(np.log2(fmt.max)) - fmt.mantissa_bits)
    return np.append(values, fmt.max + step), np.append(codes, codes[-1] + 1)


def reference_round(
    y: np.ndarray, fmt: Format, *, saturate: bool, rand_bits: np.ndarray | None = None
) -> np.ndarray:
    """uint8 codes of the fp32 values ``y`` in ``fmt``, per the contract, computed in float64.

    Any NaN result is returned as ``fmt.nan_code`` (callers compare NaN as "both NaN").
    ``rand_bits`` (integers, read as unsigned 32-bit) selects stochastic rounding:
    ``hi`` iff ``f * 2**32 > r``.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        y = np.asarray(y, dtype=np.float32).astype(np.float64)
    grid, gcodes = format_grid(fmt)
    mag = np.abs(y)
    finite = np.isfinite(y)
    a = np.where(finite, mag, 0.0)
    i = np.clip(np.searchsorted(grid, a, side="right") - 1, 0, len(grid) - 2)
    lo, hi = grid[i], grid[i + 1]
    if rand_bits is None:
        below, above = a - lo, hi - a
        tie_up = np.ones_like(a, dtype=bool) if fmt.is_scale_format else gcodes[i] % 2 == 1
        up = (above < below) | ((above == below) & tie_up)
    else:
        r = (np.asarray(rand_bits).astype(np.int64) & 0xFFFFFFFF).astype(np.float64)
        up = (a - lo) / (hi - lo) * 2.0**32 > r
    code = np.where(up, gcodes[i + 1], gcodes[i])
    overflow = (a > grid[-1]) | (code > fmt.max_code)

    nan = fmt.nan_code
    if saturate:
        overflow_code = fmt.max_code
        inf_code = nan if fmt.nan_encoding is NanEncoding.NEGATIVE_ZERO else fmt.max_code
    else:
        overflow_code = inf_code = fmt.inf_code if fmt.has_inf else nan
    code = np.where(overflow, overflow_code, code)
    code = np.where(np.isinf(y), inf_code, code)
    code = np.where(np.isnan(y), nan, code)
    negative = np.signbit(y) & ~np.isnan(y)
    if fmt.is_scale_format:
        code = np.where(negative | (y == 0), nan, code)
    elif fmt.has_negative_zero:
        code = np.where(negative, code | 0x80, code)
    else:
        code = np.where(negative & (code != 0) & (code != nan), code | 0x80, code)
    return code.astype(np.uint8)


def assert_same_codes(got, expected, fmt: Format, what: str = "", inputs=None) -> None:
    """Codes equal bit for bit, except that any two NaN codes count as equal."""
    got = np.asarray(got).astype(np.uint8).reshape(-1)
    expected = np.asarray(expected).astype(np.uint8).reshape(-1)
    table = fmt.code_values.numpy()
    both_nan = np.isnan(table[got]) & np.isnan(table[expected])
    bad = np.nonzero((got != expected) & ~both_nan)[0]
    if len(bad):
        shown = []
        for j in bad[:8]:
            x = "" if inputs is None else f"x={np.asarray(inputs).reshape(-1)[j]!r} "
            shown.append(f"{x}got {got[j]:#04x} expected {expected[j]:#04x}")
        raise AssertionError(f"{what}: {len(bad)} mismatching codes, e.g. " + "; ".join(shown))


@pytest.fixture
def clean_registry(monkeypatch):
    """Run a test with a freshly loaded registry and no PORTABLE_FP8_BACKEND; restore after."""
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    registry.reload_backends()
    yield registry
    registry.reload_backends()


@pytest.fixture
def install_plugins(tmp_path, monkeypatch, clean_registry):
    """``install(plugins, dist=...)`` installs entry points ``{name: module_source}`` as the
    separate distribution ``dist`` (a module per entry point and a ``dist-info`` directory
    with ``entry_points.txt`` on ``sys.path``, as ``pip install`` would), then reloads the
    registry. May be called several times, for several distributions; ``PORTABLE_FP8_*``
    variables and the modules are cleaned up afterwards."""
    installed = []
    monkeypatch.delenv(registry.OVERRIDE_ENV_VAR, raising=False)

    def install(plugins: dict[str, str], dist: str = "fp8_test_plugins") -> None:
        root = tmp_path / dist
        info = root / f"{dist}-0.1.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        lines = ["[portable_fp8]"]
        for name, source in plugins.items():
            module = f"_fp8_test_plugin_{name}" if dist == "fp8_test_plugins" else f"_{dist}_{name}"
            (root / f"{module}.py").write_text(source)
            lines.append(f"{name} = {module}")
            installed.append(module)
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        monkeypatch.syspath_prepend(str(root))
        registry.reload_backends()

    yield install
    for module in installed:
        sys.modules.pop(module, None)


@pytest.fixture(autouse=True)
def _no_backend_env_leak():
    """Fail loudly if a test leaves PORTABLE_FP8_BACKEND set (it would steer later tests)."""
    before = os.environ.get(registry.ENV_VAR)
    yield
    assert os.environ.get(registry.ENV_VAR) == before, "a test leaked PORTABLE_FP8_BACKEND"


@pytest.fixture
def reference_gemm_calls(monkeypatch):
    """The registered reference backend's ``scaled_mm`` recording, per call, the
    ``fast_accum`` keyword it was passed (the op layer always passes it: a call without it
    fails the test with a KeyError). Returns ``(backend,
    calls, declare)``; ``declare(model)`` makes the backend declare and emulate ``model`` as
    its fast accumulator for the rest of the test."""
    import dataclasses

    import portable_fp8 as fp8

    backend = fp8.get_backend("reference")
    calls: list = []
    original = backend.scaled_mm

    def recording(a, b, **kw):
        calls.append(kw["fast_accum"])
        return original(a, b, **kw)

    def declare(model) -> None:
        monkeypatch.setattr(backend, "fast_accumulator", model)
        caps = dataclasses.replace(backend.capabilities, fast_accumulator=model)
        monkeypatch.setattr(backend, "capabilities", caps)

    monkeypatch.setattr(backend, "scaled_mm", recording)
    return backend, calls, declare


def _usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n or 1)


def pytest_configure(config):
    """One torch thread per usable CPU, here and in the processes the tests start: more
    threads than CPUs spin-wait on each other, and the many small kernels of the suite
    then slow down many-fold (seen on a loaded 2-core machine)."""
    import torch

    n = _usable_cpus()
    if torch.get_num_threads() > n:
        torch.set_num_threads(n)
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
