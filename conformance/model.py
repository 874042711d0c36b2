"""The suite's vocabulary: verdicts, cases, case results and the run environment.

A :class:`Case` is a stable id, a kind, a description of its inputs, an optional reason why
the backend's declared capabilities exclude it, and a callable that runs it on an
:class:`Env` and returns a :class:`CaseResult`. The runner turns exceptions into failures
and applies the known-deviations file; cases only measure and decide.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from portable_fp8.dispatch.backend import Backend

__all__ = ["Verdict", "CaseResult", "Case", "Env", "PROFILES", "backend_device", "not_declared"]

#: The two profiles: ``quick`` for CI (a minute on two CPU cores), ``full`` for bring-up.
PROFILES = ("quick", "full")


class Verdict(str, enum.Enum):
    """What the suite decides about one case."""

    PASSED = "passed"
    FAILED = "failed"
    NOT_SUPPORTED = "not supported"
    KNOWN_DEVIATION = "known deviation"


@dataclass
class CaseResult:
    """The outcome of one case.

    ``error`` and ``bound`` are the measured error and the bound it is judged by (for
    bit-exact cases: the number of mismatching elements and 0). ``detail`` says what went
    wrong (or what was measured), ``reproducer`` is a minimal Python snippet showing a
    failure, and ``extra`` holds numbers for reports (e.g. K and relative errors for plots).
    """

    verdict: Verdict
    error: float | None = None
    bound: float | None = None
    detail: str = ""
    reproducer: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True)
class Env:
    """Where a run happens: the backend under test, its device and the profile."""

    backend: Backend
    device: torch.device
    profile: str = "quick"
    seed: int = 20260

    @property
    def full(self) -> bool:
        return self.profile == "full"

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        """Move an input generated on the CPU to the backend's device (strides kept)."""
        return t.to(self.device)

    def generator(self, salt: int = 0) -> torch.Generator:
        """A CPU generator seeded from the run's seed and ``salt`` (inputs are reproducible)."""
        return torch.Generator().manual_seed(self.seed * 1000003 + salt)


@dataclass(frozen=True)
class Case:
    """One check: ``run(env)`` returns its result unless ``unsupported`` names a reason."""

    id: str
    kind: str
    description: str
    run: Callable[[Env], CaseResult]
    unsupported: str | None = None


def not_declared(why: str | None) -> str | None:
    """A case's ``unsupported`` text from a ``Capabilities.why_not_*`` answer (None stays)."""
    return None if why is None else f"{why} not declared"


def backend_device(backend: Backend) -> torch.device:
    """The device a backend is tested on: ``cpu`` if it declares it, else its first device."""
    devices = sorted(backend.capabilities.devices)
    if not devices:
        raise ValueError(f"backend {backend.name!r} declares no device")
    return torch.device("cpu" if "cpu" in devices else devices[0])
