"""The plugin interface (pluggy hook specifications) of portable-fp8.

A backend plugin is a module (or object) listed under the entry-point group
``portable_fp8`` that implements::

    from portable_fp8.dispatch.hookspecs import hookimpl

    @hookimpl
    def portable_fp8_backends():
        return [MyBackend()]

The built-in backends register through this same group.
"""

from __future__ import annotations

import pluggy

__all__ = ["PROJECT_NAME", "ENTRY_POINT_GROUP", "hookspec", "hookimpl", "BackendHookSpecs"]

PROJECT_NAME = "portable_fp8"
ENTRY_POINT_GROUP = "portable_fp8"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


class BackendHookSpecs:
    """Hooks a plugin may implement."""

    @hookspec
    def portable_fp8_backends(self) -> list:
        """Return the :class:`portable_fp8.dispatch.backend.Backend` instances this plugin provides.

        Import optional dependencies lazily (inside the backend's methods or its
        ``unavailable_reason``), so a missing library makes the backend unavailable with a
        reason instead of failing the plugin's import.
        """
