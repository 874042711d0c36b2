"""The plugin interface (pluggy hook specifications) of portable-fp8.

A backend plugin is a module (or object) listed under the entry-point group
``portable_fp8`` that implements::

    from portable_fp8 import Backend, hookimpl

    @hookimpl
    def portable_fp8_backends():
        return [MyBackend()]

The built-in backends register through this same group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # for the annotation only; the registry imports both at run time
    from .backend import Backend

__all__ = ["PROJECT_NAME", "ENTRY_POINT_GROUP", "hookspec", "hookimpl", "BackendHookSpecs"]

PROJECT_NAME = "portable_fp8"
ENTRY_POINT_GROUP = "portable_fp8"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


class BackendHookSpecs:
    """Hooks a plugin may implement."""

    @hookspec
    def portable_fp8_backends(self) -> list[Backend]:
        """Return the :class:`~portable_fp8.dispatch.backend.Backend` instances this plugin
        provides (an empty list: none here).

        Contract:

        * Each item is an instance of a :class:`~portable_fp8.dispatch.backend.Backend`
          subclass with its ``name``, ``priority`` and ``capabilities`` set; names are what
          users pass to ``backend=`` and ``use_backend``.
        * Names are unique across plugins: if two plugins provide the same name, the one the
          registry loads first keeps it and the other is ignored.
        * The hook runs once, when the registry first loads its plugins (the first op call or
          registry query), not at ``import portable_fp8``. It must be cheap and must not
          raise: import optional dependencies lazily (inside the backend's methods or its
          ``unavailable_reason``), so a missing library makes the backend unavailable with a
          reason instead of failing the plugin. A hook that raises is recorded (see
          :func:`portable_fp8.dispatch.registry.plugin_errors`) and its backends are absent.
        """
