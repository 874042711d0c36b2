"""pytest plugin: the conformance cases as pytest items.

Registered through the ``pytest11`` entry point, so in any environment with portable-fp8
installed::

    pytest --pyargs portable_fp8.conformance --fp8-backend NAME [--fp8-profile full]
           [--fp8-deviations FILE]

runs one item per case (named by the case id): passed, failed (with the detail and a
reproducer), skipped for "not supported", xfailed for a known deviation.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

__all__ = ["pytest_addoption", "suite_session"]

_KEY: Any = pytest.StashKey()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("portable-fp8", "portable-fp8 conformance suite")
    group.addoption(
        "--fp8-backend",
        default=None,
        help="backend to check (default: $PORTABLE_FP8_BACKEND, then the automatic choice)",
    )
    group.addoption("--fp8-profile", default="quick", choices=("quick", "full"))
    group.addoption(
        "--fp8-deviations", default=None, help="known deviations file ('<case id> <reason>')"
    )


def suite_session(config: pytest.Config) -> dict[str, Any]:
    """The backend, environment, cases and deviations of this pytest session (made once)."""
    if _KEY not in config.stash:
        from .cases import generate_cases
        from .deviations import load_deviations, unmatched_deviations
        from .model import Env, backend_device
        from .runner import resolve_backend

        name = config.getoption("fp8_backend", default=None) or os.environ.get(
            "PORTABLE_FP8_BACKEND"
        )
        backend = resolve_backend(name)
        env = Env(backend, backend_device(backend), config.getoption("fp8_profile", "quick"))
        cases = generate_cases(env)
        devs = load_deviations(config.getoption("fp8_deviations", default=None))
        unmatched_deviations(devs, (c.id for c in cases))
        config.stash[_KEY] = {"env": env, "cases": cases, "deviations": devs}
    return config.stash[_KEY]
