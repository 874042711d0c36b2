"""Backend registry: loads plugins through pluggy and chooses the backend for a call.

Choice order: an explicit ``backend=`` argument, then the innermost
``with use_backend(name)`` (a context variable: threads and asyncio tasks each see their
own), then the ``PORTABLE_FP8_BACKEND`` environment variable, then the available backend
of highest priority whose declared devices include the input tensors' device.

Plugins are loaded once, on first use. A plugin that fails to import is recorded (shown by
``portable-fp8 backends`` and warned about once) and the others keep working.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.metadata
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import pluggy

from ..errors import BackendUnavailableError, UnknownBackendError
from .backend import Backend
from .hookspecs import ENTRY_POINT_GROUP, PROJECT_NAME, BackendHookSpecs

__all__ = [
    "ENV_VAR",
    "use_backend",
    "get_backend",
    "select_backend",
    "list_backends",
    "plugin_errors",
    "reload_backends",
]

ENV_VAR = "PORTABLE_FP8_BACKEND"

#: Built-in plugins, registered from here only if the distribution's entry points are
#: missing (running from a source tree that was never installed).
_BUILTIN_PLUGINS = {
    "reference": "portable_fp8.backends.reference",
    "cpu": "portable_fp8.backends.cpu",
}

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "portable_fp8_backend", default=None
)


@dataclass
class _State:
    backends: dict[str, Backend] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    unavailable: dict[str, str | None] = field(default_factory=dict)
    by_device: dict[str, Backend] = field(default_factory=dict)


_state: _State | None = None
_lock = threading.Lock()

# CPython's os.environ keeps its contents in ``_data`` under encoded keys; reading that dict
# costs ~20 ns where ``os.environ.get`` costs ~500 ns. It is read on every call, so a change
# to the variable takes effect on the next call as before; anything else falls back to .get.
_ENVIRON_TYPE = type(os.environ)
_ENV_KEY = (
    os.environ.encodekey(ENV_VAR)  # type: ignore[attr-defined]
    if hasattr(os.environ, "_data") and hasattr(os.environ, "encodekey")
    else None
)


def _env_choice() -> str | None:
    """The value of $PORTABLE_FP8_BACKEND in ``os.environ`` now (None if unset)."""
    env = os.environ
    if _ENV_KEY is not None and env.__class__ is _ENVIRON_TYPE:
        raw = env._data.get(_ENV_KEY)  # type: ignore[attr-defined]
        return None if raw is None else env.decodevalue(raw)  # type: ignore[attr-defined]
    return env.get(ENV_VAR)


def _load() -> _State:
    state = _State()
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(BackendHookSpecs)
    seen = set()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in seen:
            continue
        seen.add(ep.name)
        try:
            pm.register(ep.load(), name=ep.name)
        except Exception as exc:  # a broken plugin must not break the others
            state.errors[ep.name] = f"{type(exc).__name__}: {exc}"
            warnings.warn(
                f"portable-fp8: backend plugin {ep.name!r} ({ep.value}) failed to load: {exc}",
                RuntimeWarning,
                stacklevel=3,
            )
    for name, module in _BUILTIN_PLUGINS.items():
        if name not in seen:
            pm.register(importlib.import_module(module), name=name)
    for impl in pm.hook.portable_fp8_backends.get_hookimpls():
        try:
            backends = impl.function()
        except Exception as exc:
            state.errors[impl.plugin_name] = f"{type(exc).__name__}: {exc}"
            warnings.warn(
                f"portable-fp8: backend plugin {impl.plugin_name!r} failed: {exc}",
                RuntimeWarning,
                stacklevel=3,
            )
            continue
        for backend in backends or ():
            state.backends.setdefault(backend.name, backend)
    return state


def _registry() -> _State:
    global _state
    if _state is None:
        with _lock:
            if _state is None:
                _state = _load()
    return _state


def reload_backends() -> None:
    """Forget the loaded plugins; the next call loads them again (for tests, new installs)."""
    global _state
    with _lock:
        _state = None


def list_backends() -> dict[str, Backend]:
    """Every registered backend by name, available here or not."""
    return dict(_registry().backends)


def plugin_errors() -> dict[str, str]:
    """Plugins that failed to load, with the error each raised."""
    return dict(_registry().errors)


def unavailable_reason(backend: Backend) -> str | None:
    """Why ``backend`` cannot run here (None if it can); asked once per process."""
    state = _registry()
    if backend.name not in state.unavailable:
        try:
            state.unavailable[backend.name] = backend.unavailable_reason()
        except Exception as exc:
            state.unavailable[backend.name] = f"availability check failed: {exc}"
    return state.unavailable[backend.name]


def get_backend(name: str) -> Backend:
    """The backend called ``name``; raises if unknown (listing the known) or unavailable."""
    state = _registry()
    backend = state.backends.get(name)
    if backend is not None and state.unavailable.get(backend.name, "") is None:
        return backend  # known, and found available before
    if backend is None:
        known = ", ".join(sorted(state.backends)) or "none"
        broken = f"; plugins that failed to load: {', '.join(state.errors)}" if state.errors else ""
        raise UnknownBackendError(f"unknown backend {name!r}; known backends: {known}{broken}")
    reason = unavailable_reason(backend)
    if reason is not None:
        raise BackendUnavailableError(f"backend {name!r} is not available here: {reason}")
    return backend


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[Backend]:
    """Run the enclosed calls on backend ``name`` (local to this thread or asyncio task)."""
    backend = get_backend(name)
    token = _current.set(name)
    try:
        yield backend
    finally:
        _current.reset(token)


def select_backend(name: str | None = None, device: str | None = None) -> Backend:
    """The backend for one call: ``name`` > use_backend > $PORTABLE_FP8_BACKEND > by device."""
    chosen = name or _current.get() or _env_choice() or None
    if chosen:
        return get_backend(chosen)
    state = _registry()
    device_type = device or "cpu"
    cached = state.by_device.get(device_type)
    if cached is not None:
        return cached
    candidates = [
        b
        for b in state.backends.values()
        if b.capabilities.why_not_device(device_type) is None and unavailable_reason(b) is None
    ]
    if not candidates:
        raise BackendUnavailableError(
            f"no available backend runs on device {device_type!r}; "
            "run `portable-fp8 backends` to see each backend and why it is unavailable"
        )
    best = max(candidates, key=lambda b: b.priority)
    state.by_device[device_type] = best
    return best
