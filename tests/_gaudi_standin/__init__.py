"""STAND-IN, NOT HARDWARE: run the ``gaudi`` backend's adapter code without a Gaudi.

``site/habana_frameworks`` is a fake bridge package: importing ``habana_frameworks.torch.core``
registers ``hpu::cast_to_fp8_v2``, ``hpu::cast_from_fp8`` and ``hpu::fp8_gemm_v2`` with their
documented schemas and semantics, computed by portable-fp8's emulator on CPU tensors
(:mod:`_gaudi_standin.ops`). :func:`install` puts it on ``sys.path``;
:func:`standin_backend` builds the real :class:`GaudiBackend` over it, named
``gaudi-standin``, on the ``cpu`` device and with a priority that never wins automatic
selection. What passes here is the adapter's argument mapping, not Gaudi hardware.

Needs ``tests/`` on ``sys.path`` (pytest puts it there; scripts set ``PYTHONPATH=tests``).
Refuses to run where a real ``habana_frameworks`` is importable (its ``hpu::`` ops would clash).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from . import ops

__all__ = [
    "SITE",
    "NAME",
    "install",
    "uninstall",
    "real_bridge_present",
    "standin_backend",
    "register_backend",
]

#: Directory holding the fake ``habana_frameworks`` package.
SITE = Path(__file__).resolve().parent / "site"
#: Registry name of the stand-in backend.
NAME = "gaudi-standin"


def real_bridge_present() -> bool:
    """True when a real ``habana_frameworks`` (not this stand-in) is importable."""
    module = sys.modules.get("habana_frameworks")
    if module is not None:
        return not getattr(module, "STANDIN", False)
    spec = importlib.util.find_spec("habana_frameworks")
    return spec is not None and not Path(str(spec.origin)).resolve().is_relative_to(SITE)


def install(generation: str = "gaudi2") -> None:
    """Make the fake bridge importable, register its ops, behave as ``generation``."""
    if real_bridge_present():
        raise RuntimeError("a real habana_frameworks is installed: use it, not the stand-in")
    ops.set_generation(generation)
    if str(SITE) not in sys.path:
        sys.path.insert(0, str(SITE))
    importlib.import_module("habana_frameworks.torch.core")


def uninstall() -> None:
    """Take the fake bridge off ``sys.path`` and out of ``sys.modules`` (so a later
    ``GaudiBackend()`` sees no ``habana_frameworks`` again). The ops stay registered."""
    while str(SITE) in sys.path:
        sys.path.remove(str(SITE))
    for key in [k for k in sys.modules if k.split(".")[0] == "habana_frameworks"]:
        origin = getattr(sys.modules[key], "__file__", None)
        if origin is not None and Path(origin).resolve().is_relative_to(SITE):
            del sys.modules[key]


def standin_backend(generation: str = "gaudi2", **kwargs):
    """The real ``GaudiBackend`` over the stand-in bridge, as ``gaudi-standin`` on CPU."""
    from portable_fp8.backends.gaudi import GaudiBackend, HabanaBridge

    install(generation)
    kwargs.setdefault("name", NAME)
    kwargs.setdefault("priority", -100)
    return GaudiBackend(HabanaBridge(device_type="cpu"), **kwargs)


def register_backend(backend, setitem=None) -> None:
    """Add ``backend`` to the loaded registry under its name (test-only: the registry has no
    public registration call besides entry points). ``setitem`` may be pytest's
    ``monkeypatch.setitem`` so the change is undone after the test."""
    from portable_fp8.dispatch import registry

    state = registry._registry()
    put = setitem or (lambda d, k, v: d.__setitem__(k, v))
    put(state.backends, backend.name, backend)
    put(state.unavailable, backend.name, backend.unavailable_reason())
