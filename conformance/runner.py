"""Run the suite on one backend: generate cases, run each, decide, apply known deviations.

A case the backend's capabilities exclude is "not supported" without running. A case that
runs and raises (any exception, ``NotSupportedError`` included: the backend claimed the
feature) or disagrees with the reference is "failed", unless the known-deviations file
lists it ("known deviation", with the file's reason).
"""

from __future__ import annotations

import fnmatch
import os
import platform
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import portable_fp8
from portable_fp8.dispatch import registry
from portable_fp8.dispatch.backend import Backend
from portable_fp8.errors import Fp8ValueError

from .cases import generate_cases
from .deviations import load_deviations, unmatched_deviations
from .model import PROFILES, Case, CaseResult, Env, Verdict, backend_device
from .progress import DEFAULT_INTERVAL_S, RunProgress

__all__ = [
    "CaseRecord",
    "SuiteReport",
    "resolve_backend",
    "run_suite",
    "run_case",
    "list_cases",
    "run_one",
    "SuiteInterrupted",
]


@dataclass
class CaseRecord:
    """A case's identity and its result."""

    id: str
    kind: str
    description: str
    result: CaseResult


@dataclass
class SuiteReport:
    """Everything a run found: what ran where, each case, the fingerprint."""

    backend: str
    profile: str
    device: str
    versions: dict[str, Any]
    capabilities: dict[str, Any]
    records: list[CaseRecord]
    fingerprint: dict[str, Any] = field(default_factory=dict)
    unmatched_deviations: list[str] = field(default_factory=list)
    seconds: float = 0.0
    command: str = ""
    #: True when the run was stopped (Ctrl-C / SIGINT) before all cases ran
    interrupted: bool = False

    def counts(self) -> dict[str, int]:
        """Number of cases per verdict (every verdict present, zeros included)."""
        c = Counter(r.result.verdict for r in self.records)
        return {v.value: c.get(v, 0) for v in Verdict}

    @property
    def failed(self) -> list[CaseRecord]:
        return [r for r in self.records if r.result.verdict is Verdict.FAILED]

    @property
    def ok(self) -> bool:
        """True when every case ran and nothing failed (the CLI's exit status 0)."""
        return not self.failed and not self.interrupted

    @property
    def status(self) -> str:
        """``"passed"``, ``"failed"`` or ``"interrupted"`` (the reports' headline)."""
        return "interrupted" if self.interrupted else "passed" if self.ok else "failed"


class SuiteInterrupted(KeyboardInterrupt):
    """A run stopped by KeyboardInterrupt; ``report`` holds the cases that ran (marked
    ``interrupted``). A KeyboardInterrupt, so code unaware of it still stops."""

    def __init__(self, report: SuiteReport) -> None:
        super().__init__("conformance run interrupted")
        self.report = report


def resolve_backend(backend: Backend | str | None) -> Backend:
    """A backend object from an object, a name, ``$PORTABLE_FP8_BACKEND`` or the automatic
    choice (the available backend of highest priority on any device of this machine)."""
    if isinstance(backend, Backend):
        return backend
    name = backend or registry.env_backend_name()
    if name:
        return registry.get_backend(name)
    available = [
        b for b in registry.list_backends().values() if registry.unavailable_reason(b) is None
    ]
    if not available:
        raise portable_fp8.BackendUnavailableError("no backend is available on this machine")
    return max(available, key=lambda b: b.priority)


def _versions(backend: Backend, device: torch.device) -> dict[str, Any]:
    try:
        described = backend.describe()
    except Exception as exc:  # a failing describe() must not stop the run
        described = {"error": f"{type(exc).__name__}: {exc}"}
    info: dict[str, Any] = {
        "portable_fp8": portable_fp8.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "backend_describe": described,
    }
    if device.type == "cuda" and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(device)
    return info


def _check_inputs_untouched(env: Env, result: CaseResult) -> CaseResult:
    """Fail a case whose backend wrote into a tensor it was given (the contract's ops are
    functional: inputs are read only)."""
    assert env.sent is not None
    bad = env.sent.modified()
    if not bad:
        return result
    shapes = [tuple(env.sent.pairs[i][0].shape) for i in bad]
    return CaseResult(
        Verdict.FAILED,
        len(bad),
        0,
        detail=f"the backend modified {len(bad)} of its {len(env.sent.pairs)} input tensors "
        f"in place (inputs {bad}, shapes {shapes}); ops must leave their inputs unchanged"
        + (f" | {result.detail}" if result.detail else ""),
        reproducer=result.reproducer,
        extra=result.extra,
    )


def run_one(case: Case, env: Env, deviations: dict[str, str]) -> CaseResult:
    """Run one case (unless unsupported), turn exceptions into failures, apply deviations."""
    if case.unsupported is not None:
        return CaseResult(Verdict.NOT_SUPPORTED, detail=case.unsupported)
    start = time.perf_counter()
    env = env.for_case(case.id)
    try:
        result = case.run(env)
        result = _check_inputs_untouched(env, result)
    except Exception as exc:
        tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
        where = "".join(tb[-3:]).strip()
        result = CaseResult(
            Verdict.FAILED,
            detail=f"raised {type(exc).__name__}: {exc} (the backend declares this feature)",
            reproducer="# traceback tail:\n# " + where.replace("\n", "\n# "),
        )
    result.seconds = time.perf_counter() - start
    assert env.sent is not None
    result.input_sha256 = env.sent.hash.hexdigest()
    if result.verdict is Verdict.FAILED and case.id in deviations:
        result.verdict = Verdict.KNOWN_DEVIATION
        result.detail = f"known deviation: {deviations[case.id]} | {result.detail}"
    elif result.verdict is Verdict.PASSED and case.id in deviations:
        result.detail += " (listed as a known deviation but passed: the entry may be stale)"
    return result


def list_cases(backend: Backend | str | None = None, profile: str = "quick") -> list[Case]:
    """The cases a run of ``profile`` would have for ``backend``."""
    b = resolve_backend(backend)
    return generate_cases(Env(b, backend_device(b), profile))


def run_suite(
    backend: Backend | str | None = None,
    *,
    profile: str = "quick",
    deviations: dict[str, str] | str | Path | None = None,
    select: str | Callable[[str], bool] | None = None,
    progress: bool | None = None,
    fingerprint: bool = True,
    command: str = "",
    progress_interval: float = DEFAULT_INTERVAL_S,
    exitfirst: bool = False,
) -> SuiteReport:
    """Run the suite and return its report.

    ``select`` is a glob over case ids (or a predicate) restricting the run; the
    known-deviations ``deviations`` are a mapping or a file path. Progress goes to stderr
    (:class:`~portable_fp8.conformance.progress.RunProgress`): a bar on a terminal, else a
    plain line every ``progress_interval`` seconds; ``progress=False`` silences it (``None``
    and ``True`` both show it). A KeyboardInterrupt during the run is
    raised as :class:`SuiteInterrupted`, carrying the report of the cases that ran.
    ``exitfirst=True`` stops at the first failed case (the report then holds the cases up to
    and including it, no fingerprint; it is not ``ok``): fail-fast, for mutation testing.
    """
    if profile not in PROFILES:
        raise Fp8ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    start = time.perf_counter()
    b = resolve_backend(backend)
    env = Env(b, backend_device(b), profile)
    devs = deviations if isinstance(deviations, dict) else load_deviations(deviations)
    cases = generate_cases(env)
    stale = unmatched_deviations(devs, (c.id for c in cases))
    if isinstance(select, str):
        pattern = select
        cases = [c for c in cases if fnmatch.fnmatchcase(c.id, pattern)]
    elif select is not None:
        cases = [c for c in cases if select(c.id)]
    bar = RunProgress(len(cases), enabled=progress is not False, interval=progress_interval)
    records: list[CaseRecord] = []
    fp: dict[str, Any] = {}
    stopped = False  # set when exitfirst stops the run at a failure

    def report(interrupted: bool) -> SuiteReport:
        return SuiteReport(
            backend=b.name,
            profile=profile,
            device=str(env.device),
            versions=_versions(b, env.device),
            capabilities=b.capabilities.as_dict(),
            records=records,
            fingerprint=fp,
            unmatched_deviations=stale,
            seconds=time.perf_counter() - start,
            command=command,
            interrupted=interrupted,
        )

    try:
        with bar:
            for case in cases:
                bar.start_case(case.id)
                result = run_one(case, env, devs)
                records.append(CaseRecord(case.id, case.kind, case.description, result))
                bar.end_case(result.verdict is Verdict.FAILED)
                if exitfirst and result.verdict is Verdict.FAILED:
                    stopped = True
                    break
            if fingerprint and not stopped:
                from .fingerprint import numerics_fingerprint

                bar.start_fingerprint()
                fp = numerics_fingerprint(env)
    except KeyboardInterrupt as exc:
        raise SuiteInterrupted(report(interrupted=True)) from exc
    return report(interrupted=False)


def run_case(
    case_id: str, backend: Backend | str | None = None, profile: str | None = None
) -> CaseResult:
    """Run the single case ``case_id`` (looked up in the quick, then the full profile)."""
    b = resolve_backend(backend)
    for prof in (profile,) if profile else PROFILES:
        env = Env(b, backend_device(b), prof)
        for case in generate_cases(env):
            if case.id == case_id:
                return run_one(case, env, {})
    profiles = profile or " or ".join(PROFILES)
    raise Fp8ValueError(
        f"case_id: no conformance case {case_id!r} for backend {b.name!r} in the {profiles} "
        "profile (list_cases() lists the ids)"
    )
