"""Exception types raised by portable-fp8.

Every error the library raises on purpose derives from :class:`Fp8Error`, so model code can
catch one type. Bad arguments also derive from the matching built-in (``ValueError`` or
``TypeError``) so that generic handlers keep working.
"""

from __future__ import annotations

__all__ = [
    "Fp8Error",
    "Fp8ValueError",
    "Fp8TypeError",
    "UnknownFormatError",
    "UnknownBackendError",
    "UnknownRecipeError",
    "BackendUnavailableError",
    "NotSupportedError",
]


class Fp8Error(Exception):
    """Base class of every error raised by portable-fp8."""


class Fp8ValueError(Fp8Error, ValueError):
    """An argument has the right type but a wrong value (shape, device, layout, range)."""


class Fp8TypeError(Fp8Error, TypeError):
    """An argument has the wrong type or dtype."""


class UnknownFormatError(Fp8ValueError):
    """A format name or dtype that portable-fp8 does not know."""


class UnknownBackendError(Fp8ValueError):
    """A backend name that no registered plugin provides; the message lists the known ones."""


class UnknownRecipeError(Fp8ValueError):
    """A recipe name (e.g. torchao's ``from_recipe_name``) that portable-fp8 does not map; the
    message lists the known ones."""


class BackendUnavailableError(Fp8Error):
    """A known backend that cannot run here; the message says why (no device, missing module)."""


class NotSupportedError(Fp8Error):
    """The chosen backend does not declare the requested feature; never a silent fallback."""

    def __init__(self, backend: str, feature: str) -> None:
        super().__init__(f"backend {backend!r} does not support {feature}")
        self.backend = backend
        self.feature = feature
