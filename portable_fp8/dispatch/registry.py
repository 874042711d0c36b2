"""Backend registry: loads plugins through pluggy and chooses the backend for a call.

Choice order: an explicit ``backend=`` argument, then the innermost
``with use_backend(name)`` (a context variable: threads and asyncio tasks each see their
own), then the ``PORTABLE_FP8_BACKEND`` environment variable (surrounding whitespace
ignored; empty means unset), then the available backend of highest priority whose declared
devices include the input tensors' device.

Plugins are loaded once, on first use, and every plugin fault is contained: an import that
raises (``SystemExit`` included; ``KeyboardInterrupt`` still interrupts), a hook that raises
or returns anything but Backend objects, a backend whose ``capabilities`` or ``priority``
is missing, raises or has the wrong type. Each fault is recorded with the plugin's
distribution (:func:`plugin_errors`, shown by ``portable-fp8 backends``) and all of them are
reported in one ``RuntimeWarning``; the other backends keep working. A backend with bad
declarations is listed but unavailable, with the reason.

Names are resolved by one order-independent rule:

* a name offered by the portable-fp8 distribution itself is *built-in* and reserved: a
  third-party offer of it is ignored (and reported) unless the user lists the name in
  ``PORTABLE_FP8_ALLOW_OVERRIDE`` (comma-separated), in which case the single third-party
  offer replaces the built-in;
* a name offered more than once by third parties (two distributions, or twice by one) is a
  conflict: every offer is rejected, the name is unusable with an error naming each offer,
  and ``portable-fp8 backends`` lists it.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.metadata
import os
import re
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pluggy

from ..errors import BackendUnavailableError, UnknownBackendError
from .backend import Backend, Capabilities
from .hookspecs import ENTRY_POINT_GROUP, PROJECT_NAME, BackendHookSpecs

__all__ = [
    "ENV_VAR",
    "OVERRIDE_ENV_VAR",
    "use_backend",
    "get_backend",
    "select_backend",
    "list_backends",
    "plugin_errors",
    "conflicts",
    "unavailable_reason",
    "env_backend_name",
    "reload_backends",
]

ENV_VAR = "PORTABLE_FP8_BACKEND"
#: Comma-separated built-in backend names a third-party plugin may replace.
OVERRIDE_ENV_VAR = "PORTABLE_FP8_ALLOW_OVERRIDE"

#: The distribution whose backends are built-in (its names are reserved).
_OWN_DISTRIBUTION = "portable-fp8"

#: Built-in plugins, registered from here only if the distribution's entry points are
#: missing (running from a source tree that was never installed).
_BUILTIN_PLUGINS = {
    "reference": "portable_fp8.backends.reference",
    "cpu": "portable_fp8.backends.cpu",
}

#: What a plugin may raise that is contained: every error, and ``sys.exit()`` in its code.
#: ``KeyboardInterrupt`` (and ``GeneratorExit``) are not caught: the user asked to stop.
_PLUGIN_FAULTS = (Exception, SystemExit)

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "portable_fp8_backend", default=None
)


@dataclass
class _Offer:
    """One backend object offered by one plugin (an entry point of a distribution)."""

    backend: Backend
    plugin: str
    distribution: str

    @property
    def builtin(self) -> bool:
        return self.distribution == _OWN_DISTRIBUTION

    def where(self) -> str:
        return f"plugin {self.plugin!r} of distribution {self.distribution!r}"


@dataclass
class _State:
    backends: dict[str, Backend] = field(default_factory=dict)
    #: plugin (entry-point name) -> the problems it had, one sentence each, "; "-joined
    errors: dict[str, str] = field(default_factory=dict)
    #: backend name -> why it cannot be used: offered by several third parties
    conflicts: dict[str, str] = field(default_factory=dict)
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
    """$PORTABLE_FP8_BACKEND in ``os.environ`` now, stripped (None if unset or blank)."""
    env = os.environ
    if _ENV_KEY is not None and env.__class__ is _ENVIRON_TYPE:
        raw = env._data.get(_ENV_KEY)  # type: ignore[attr-defined]
        value = None if raw is None else env.decodevalue(raw)  # type: ignore[attr-defined]
    else:
        value = env.get(ENV_VAR)
    return (value.strip() or None) if value else None


def env_backend_name() -> str | None:
    """The backend named by ``$PORTABLE_FP8_BACKEND`` (whitespace stripped; None if unset
    or blank)."""
    return _env_choice()


def _normalise(dist_name: str) -> str:
    return re.sub(r"[-_.]+", "-", dist_name).lower()


def _distribution(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    name = getattr(dist, "name", None) if dist is not None else None
    return _normalise(name) if name else "<unknown distribution>"


def _allowed_overrides() -> frozenset[str]:
    raw = os.environ.get(OVERRIDE_ENV_VAR, "")
    return frozenset(n.strip() for n in raw.split(",") if n.strip())


def _check_backend(backend: Backend) -> str | None:
    """Why ``backend``'s declarations are unusable (None if they are fine)."""
    try:
        caps = backend.capabilities
    except _PLUGIN_FAULTS as exc:
        return f"broken: reading its capabilities raised {type(exc).__name__}: {exc}"
    if not isinstance(caps, Capabilities):
        return (
            f"broken: its capabilities are a {type(caps).__name__}, not a "
            "portable_fp8.dispatch.backend.Capabilities"
        )
    if not isinstance(caps.devices, (set, frozenset)) or not all(
        isinstance(d, str) for d in caps.devices
    ):
        return f"broken: capabilities.devices must be a set of device names, got {caps.devices!r}"
    try:
        priority = backend.priority
    except _PLUGIN_FAULTS as exc:
        return f"broken: reading its priority raised {type(exc).__name__}: {exc}"
    if not isinstance(priority, int) or isinstance(priority, bool):
        return f"broken: its priority must be an int, got {priority!r}"
    return None


class _Loader:
    """One load of every plugin: collects offers and faults, then resolves names."""

    def __init__(self) -> None:
        self.state = _State()
        self.pm = pluggy.PluginManager(PROJECT_NAME)
        self.pm.add_hookspecs(BackendHookSpecs)
        self.offers: dict[str, list[_Offer]] = {}
        self.reserved: set[str] = set()

    def fault(self, plugin: str, distribution: str, problem: str) -> None:
        text = f"{problem} (distribution {distribution!r})"
        old = self.state.errors.get(plugin)
        self.state.errors[plugin] = text if old is None else f"{old}; {text}"

    def load_plugin(self, plugin: str, distribution: str, load: Any) -> None:
        """Import one plugin, call its hook, and record its offers or its faults."""
        try:
            obj = load()
        except _PLUGIN_FAULTS as exc:
            self.fault(plugin, distribution, f"failed to load: {type(exc).__name__}: {exc}")
            return
        key = f"{distribution}:{plugin}"
        try:
            self.pm.register(obj, name=key)
        except _PLUGIN_FAULTS as exc:
            self.fault(plugin, distribution, f"failed to register: {type(exc).__name__}: {exc}")
            return
        impls = [
            i for i in self.pm.hook.portable_fp8_backends.get_hookimpls() if i.plugin_name == key
        ]
        if not impls:
            self.fault(plugin, distribution, "implements no portable_fp8_backends hook")
        for impl in impls:
            try:
                returned = impl.function()
                items = list(returned) if isinstance(returned, (list, tuple)) else None
                if items is None and returned is not None and hasattr(returned, "__next__"):
                    items = list(returned)  # a generator: it may raise midway, caught below
            except _PLUGIN_FAULTS as exc:
                self.fault(plugin, distribution, f"hook raised {type(exc).__name__}: {exc}")
                continue
            if items is None:
                self.fault(
                    plugin,
                    distribution,
                    f"hook returned a {type(returned).__name__}, not a list of Backend objects",
                )
                continue
            for i, item in enumerate(items):
                name = getattr(item, "name", None) if isinstance(item, Backend) else None
                if not isinstance(name, str) or not name.strip():
                    what = (
                        f"a Backend with name {name!r}"
                        if isinstance(item, Backend)
                        else f"{item!r} ({type(item).__name__})"
                    )
                    self.fault(plugin, distribution, f"hook returned {what} at index {i}, ignored")
                    continue
                offer = _Offer(item, plugin, distribution)
                self.offers.setdefault(name, []).append(offer)
                if offer.builtin:
                    self.reserved.add(name)

    def resolve(self) -> None:
        """Apply the naming rule (module docstring) to every offered name, in sorted order."""
        allowed = _allowed_overrides()
        for name in sorted(self.offers):
            offers = self.offers[name]
            own = [o for o in offers if o.builtin]
            third = [o for o in offers if not o.builtin]
            if name in self.reserved and third and name not in allowed:
                for o in third:
                    self.fault(
                        o.plugin,
                        o.distribution,
                        f"offers backend {name!r}, a name reserved for portable-fp8's "
                        f"built-in backend; ignored (set {OVERRIDE_ENV_VAR}={name} to let "
                        "it replace the built-in)",
                    )
                third = []
            chosen = third if third else own
            if len(chosen) > 1:
                where = " and ".join(o.where() for o in chosen)
                self.state.conflicts[name] = f"backend {name!r} is offered by {where}"
                for o in chosen:
                    self.fault(
                        o.plugin,
                        o.distribution,
                        f"offers backend {name!r}, which is offered more than once "
                        f"({where}); the name is unusable until one is uninstalled",
                    )
                continue
            backend = chosen[0].backend
            self.state.backends[name] = backend
            broken = _check_backend(backend)
            if broken is not None:
                self.state.unavailable[name] = broken
                self.fault(chosen[0].plugin, chosen[0].distribution, f"backend {name!r} {broken}")

    def warn(self) -> None:
        if not self.state.errors:
            return
        lines = "\n".join(f"  plugin {p!r}: {e}" for p, e in sorted(self.state.errors.items()))
        warnings.warn(
            "portable-fp8: some backend plugins failed (the other backends work; run "
            f"`portable-fp8 backends` for details):\n{lines}",
            RuntimeWarning,
            stacklevel=4,
        )


def _load() -> _State:
    loader = _Loader()
    own_plugins = set()
    seen = set()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = _distribution(ep)
        if (dist, ep.name) in seen:  # one distribution visible twice on sys.path
            continue
        seen.add((dist, ep.name))
        if dist == _OWN_DISTRIBUTION:
            own_plugins.add(ep.name)
        loader.load_plugin(ep.name, dist, ep.load)
    for name, module in _BUILTIN_PLUGINS.items():
        if name not in own_plugins:
            loader.load_plugin(name, _OWN_DISTRIBUTION, lambda m=module: importlib.import_module(m))
    loader.resolve()
    loader.warn()
    return loader.state


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
    """Every registered backend by name, available here or not (conflicting names excluded:
    see :func:`conflicts`)."""
    return dict(_registry().backends)


def plugin_errors() -> dict[str, str]:
    """Plugins that failed, in part or whole: entry-point name -> what went wrong, naming
    the plugin's distribution."""
    return dict(_registry().errors)


def conflicts() -> dict[str, str]:
    """Backend names that cannot be used because several third parties offer them, each
    with a sentence naming the offers."""
    return dict(_registry().conflicts)


def unavailable_reason(backend: Backend) -> str | None:
    """Why ``backend`` cannot run here (None if it can); asked once per process."""
    state = _registry()
    if backend.name not in state.unavailable:
        try:
            reason = backend.unavailable_reason()
        except _PLUGIN_FAULTS as exc:
            reason = f"availability check failed: {type(exc).__name__}: {exc}"
        state.unavailable[backend.name] = None if reason is None else str(reason)
    return state.unavailable[backend.name]


def get_backend(name: str) -> Backend:
    """The backend called ``name``; raises if unknown (listing the known) or unavailable."""
    state = _registry()
    backend = state.backends.get(name)
    if backend is not None and state.unavailable.get(backend.name, "") is None:
        return backend  # known, and found available before
    if backend is None:
        if name in state.conflicts:
            raise BackendUnavailableError(
                f"backend {name!r} cannot be used: {state.conflicts[name]}; uninstall all "
                "but one of them"
            )
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
    chosen = name or _current.get() or _env_choice()
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
        if unavailable_reason(b) is None and b.capabilities.why_not_device(device_type) is None
    ]
    if not candidates:
        raise BackendUnavailableError(
            f"no available backend runs on device {device_type!r}; "
            "run `portable-fp8 backends` to see each backend and why it is unavailable"
        )
    best = max(candidates, key=lambda b: b.priority)
    state.by_device[device_type] = best
    return best
