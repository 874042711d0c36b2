"""The plugin registry: third-party entry points, broken plugins, selection order, contexts.

Third-party plugins are installed by the ``install_plugins`` fixture (conftest.py): it
writes a module and a ``*.dist-info`` directory with ``entry_points.txt`` into a temporary
directory and puts it on ``sys.path``, exactly as ``pip install`` of a separate distribution
would make them visible to ``importlib.metadata``. Faulty plugins are in
test_plugin_faults.py.
"""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import threading

import pytest
import torch

import portable_fp8 as fp8
from portable_fp8 import cli
from portable_fp8.errors import BackendUnavailableError, UnknownBackendError
from portable_fp8.numerics.cast import codes_of

_PLUGIN_SOURCE = textwrap.dedent(
    '''
    """A third-party backend, known to portable-fp8 only through its entry point."""
    from portable_fp8.backends.reference import ReferenceBackend
    from portable_fp8.dispatch.hookspecs import hookimpl

    CALLS = []


    class ThirdPartyBackend(ReferenceBackend):
        name = "thirdparty"
        priority = -5

        def cast_to_fp8(self, x, fmt, scale, granularity, *, saturate, rand_bits):
            CALLS.append("cast_to_fp8")
            return super().cast_to_fp8(
                x, fmt, scale, granularity, saturate=saturate, rand_bits=rand_bits
            )


    class FakeDeviceBackend(ReferenceBackend):
        name = "fakedev"
        priority = 3

        def __init__(self):
            super().__init__()
            import dataclasses
            self.capabilities = dataclasses.replace(
                self.capabilities, devices=frozenset({"fakedev"})
            )


    class UnavailableBackend(ReferenceBackend):
        name = "needs_hw"
        priority = 1000  # would win on CPU if it were available

        def unavailable_reason(self):
            return "no FooAccelerator found (driver libfoo.so not loadable)"


    @hookimpl
    def portable_fp8_backends():
        return [ThirdPartyBackend(), FakeDeviceBackend(), UnavailableBackend()]
    '''
)


def _auto() -> str:
    """The automatic choice for CPU tensors: the available CPU backend of top priority."""
    available = [
        b for b in fp8.list_backends().values()
        if "cpu" in b.capabilities.devices and fp8.dispatch.registry.unavailable_reason(b) is None
    ]  # fmt: skip
    return max(available, key=lambda b: b.priority).name


_BROKEN_SOURCE = 'raise ImportError("simulated: vendor library missing")\n'


def test_third_party_backend_found_and_selected_by_env_var(install_plugins, monkeypatch):
    install_plugins({"thirdparty": _PLUGIN_SOURCE})
    backends = fp8.list_backends()
    assert {"reference", "cpu", "thirdparty", "fakedev", "needs_hw"} <= set(backends)
    assert fp8.select_backend().name == _auto()  # the plugin's priority -5 does not win

    monkeypatch.setenv(fp8.ENV_VAR, "thirdparty")
    assert fp8.select_backend().name == "thirdparty"
    x = torch.linspace(-500, 500, 1001)
    q = fp8.cast_to_fp8(x, "e4m3fn")
    calls = sys.modules["_fp8_test_plugin_thirdparty"].CALLS
    assert calls == ["cast_to_fp8"]  # the call really went to the plugin
    ref = fp8.cast_to_fp8(x, "e4m3fn", backend="reference")
    assert torch.equal(codes_of(q), codes_of(ref))


def test_broken_plugin_is_reported_and_the_others_work(install_plugins):
    install_plugins({"broken": _BROKEN_SOURCE, "thirdparty": _PLUGIN_SOURCE})
    with pytest.warns(RuntimeWarning, match="'broken'.*failed to load.*simulated"):
        backends = fp8.list_backends()
    assert {"reference", "cpu", "thirdparty"} <= set(backends)
    errors = fp8.dispatch.registry.plugin_errors()
    assert "broken" in errors and "simulated: vendor library missing" in errors["broken"]
    with pytest.raises(UnknownBackendError, match="failed to load: broken"):
        fp8.get_backend("broken")
    q = fp8.cast_to_fp8(torch.ones(3), "e5m2", backend="thirdparty")
    assert q.dtype == torch.float8_e5m2


def test_broken_plugin_shows_in_cli_listing(install_plugins, capsys):
    install_plugins({"broken": _BROKEN_SOURCE})
    with pytest.warns(RuntimeWarning):
        assert cli.main(["backends", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "simulated" in out["plugin_errors"]["broken"]
    names = {row["name"]: row for row in out["backends"]}
    assert names["reference"]["available"] and names["cpu"]["available"]


def test_unavailable_backend_says_why_and_is_never_chosen_automatically(install_plugins):
    install_plugins({"thirdparty": _PLUGIN_SOURCE})
    with pytest.raises(BackendUnavailableError, match="needs_hw.*libfoo.so not loadable"):
        fp8.get_backend("needs_hw")
    with pytest.raises(BackendUnavailableError, match="libfoo"):
        fp8.cast_to_fp8(torch.ones(2), backend="needs_hw")
    # Priority 1000 but unavailable: automatic choice skips it.
    assert fp8.select_backend(device="cpu").name == _auto() != "needs_hw"


def test_automatic_choice_by_device(install_plugins):
    install_plugins({"thirdparty": _PLUGIN_SOURCE})
    assert fp8.select_backend(device="fakedev").name == "fakedev"
    with pytest.raises(BackendUnavailableError, match="portable-fp8 backends"):
        fp8.select_backend(device="nodevice")


def test_unknown_backend_lists_known(clean_registry, monkeypatch):
    for call in (
        lambda: fp8.get_backend("nope"),
        lambda: fp8.cast_to_fp8(torch.ones(2), backend="nope"),
        lambda: fp8.use_backend("nope").__enter__(),
    ):
        with pytest.raises(UnknownBackendError) as info:
            call()
        assert "'nope'" in str(info.value)
        assert "reference" in str(info.value) and "cpu" in str(info.value)
    monkeypatch.setenv(fp8.ENV_VAR, "nope")
    with pytest.raises(UnknownBackendError, match="known backends"):
        fp8.cast_to_fp8(torch.ones(2))


def test_selection_order(install_plugins, monkeypatch):
    install_plugins({"thirdparty": _PLUGIN_SOURCE})
    assert fp8.select_backend().name == _auto() == "cpu"  # automatic (priority 10)
    monkeypatch.setenv(fp8.ENV_VAR, "reference")
    assert fp8.select_backend().name == "reference"  # env var beats automatic
    with fp8.use_backend("thirdparty"):
        assert fp8.select_backend().name == "thirdparty"  # use_backend beats env var
        assert fp8.select_backend("cpu").name == "cpu"  # explicit beats use_backend
        calls = sys.modules["_fp8_test_plugin_thirdparty"].CALLS
        fp8.cast_to_fp8(torch.ones(2), backend="cpu")
        assert calls == []
        fp8.cast_to_fp8(torch.ones(2))
        assert calls == ["cast_to_fp8"]
    assert fp8.select_backend().name == "reference"


def test_nested_use_backend_restores(clean_registry):
    with fp8.use_backend("reference") as outer:
        assert outer.name == "reference"
        with fp8.use_backend("cpu"):
            assert fp8.select_backend().name == "cpu"
            with fp8.use_backend("reference"):
                assert fp8.select_backend().name == "reference"
            assert fp8.select_backend().name == "cpu"
        assert fp8.select_backend().name == "reference"
    assert fp8.select_backend().name == _auto()
    with pytest.raises(RuntimeError), fp8.use_backend("reference"):
        raise RuntimeError("restored on the way out too")
    assert fp8.select_backend().name == _auto()


def test_use_backend_is_local_to_each_thread(clean_registry):
    """Two threads hold different backends at the same time; neither sees the other's."""
    barrier = threading.Barrier(2, timeout=10)
    seen: dict[str, list[str]] = {}

    def worker(name: str) -> None:
        with fp8.use_backend(name):
            barrier.wait()  # both are inside their own context now
            seen[name] = [fp8.select_backend().name]
            barrier.wait()
            seen[name].append(fp8.select_backend().name)
        seen[name].append(fp8.select_backend().name)

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("reference", "cpu")]
    with fp8.use_backend("reference"):  # the main thread's context does not leak in either
        outside: list[str] = []
        t = threading.Thread(target=lambda: outside.append(fp8.select_backend().name))
        t.start()
        t.join()
        assert outside == [_auto()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {
        "reference": ["reference", "reference", _auto()],
        "cpu": ["cpu", "cpu", _auto()],
    }


def test_use_backend_is_local_to_each_asyncio_task(clean_registry):
    async def task(name: str, log: list) -> None:
        with fp8.use_backend(name):
            await asyncio.sleep(0.01)  # the other task runs meanwhile
            log.append((name, fp8.select_backend().name))

    async def main() -> list:
        log: list = []
        await asyncio.gather(task("reference", log), task("cpu", log))
        return log

    assert sorted(asyncio.run(main())) == [("cpu", "cpu"), ("reference", "reference")]
