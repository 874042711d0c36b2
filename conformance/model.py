"""The suite's vocabulary: verdicts, cases, case results and the run environment.

A :class:`Case` is a stable id, a kind, a description of its inputs, an optional reason why
the backend's declared capabilities exclude it, and a callable that runs it on an
:class:`Env` and returns a :class:`CaseResult`. The runner turns exceptions into failures
and applies the known-deviations file; cases only measure and decide.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from portable_fp8.dispatch.backend import Backend
from portable_fp8.errors import Fp8ValueError

__all__ = [
    "Verdict",
    "CaseResult",
    "Case",
    "Env",
    "PROFILES",
    "backend_device",
    "case_seed",
    "not_declared",
]

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
    #: sha256 over every input tensor the case sent to the backend (dtype, shape, strides and
    #: bytes, in the order sent): equal hashes on two machines mean equal inputs.
    input_sha256: str = ""


class _Sent:
    """The inputs one case sends to the backend: a running hash and pristine copies.

    Every tensor a case moves to the device goes through :meth:`Env.to_device`, which
    records it here; after the case, :meth:`modified` says which ones the backend wrote to.
    """

    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def add(self, cpu: torch.Tensor, moved: torch.Tensor) -> None:
        flat = cpu.detach().contiguous().reshape(-1)
        self.hash.update(f"{cpu.dtype}{tuple(cpu.shape)}{cpu.stride()};".encode())
        self.hash.update(flat.view(torch.uint8).numpy().tobytes())
        self.pairs.append((moved, moved.detach().clone()))

    def modified(self) -> list[int]:
        """Indices (in the order sent) of inputs whose bits changed since they were sent."""
        bad = []
        for i, (moved, before) in enumerate(self.pairs):
            now, was = moved.detach().cpu(), before.cpu()
            if now.shape != was.shape or not _same_bits(now, was):
                bad.append(i)
        return bad


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.numel() == 0:
        return True
    as_bytes = [t.contiguous().reshape(-1).view(torch.uint8) for t in (a, b)]
    return bool(torch.equal(*as_bytes))


def case_seed(seed: int, case_id: str, salt: int = 0) -> int:
    """A 63-bit seed from the run's seed, the case id and ``salt`` (sha256: stable across
    processes and machines, unlike Python's ``hash``)."""
    digest = hashlib.sha256(f"{seed}/{case_id}/{salt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class Env:
    """Where a run happens: the backend under test, its device and the profile."""

    backend: Backend
    device: torch.device
    profile: str = "quick"
    seed: int = 20260
    #: The case being run (set by the runner; seeds :meth:`generator`).
    case_id: str = ""
    sent: _Sent | None = field(default=None, compare=False, repr=False)

    @property
    def full(self) -> bool:
        return self.profile == "full"

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        """Move an input generated on the CPU to the backend's device (strides kept), hash it
        and keep a copy to check that the backend leaves it unmodified."""
        moved = t.to(self.device)
        if self.sent is not None:
            self.sent.add(t, moved)
        return moved

    def generator(self, salt: int = 0) -> torch.Generator:
        """A CPU generator seeded from the run's seed, the case id and ``salt``.

        Every random input of a case comes from such a generator (never torch's global
        one), so a case id names the same inputs in every process and on every machine.
        """
        return torch.Generator().manual_seed(case_seed(self.seed, self.case_id, salt))

    def for_case(self, case_id: str) -> Env:
        """This environment for running ``case_id`` (its own seed and input record)."""
        return dataclasses.replace(self, case_id=case_id, sent=_Sent())


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
        raise Fp8ValueError(
            f"backend {backend.name!r} declares no device (capabilities.devices is empty)"
        )
    return torch.device("cpu" if "cpu" in devices else devices[0])
