"""The conformance suite (installed as ``portable_fp8.conformance``).

Runs the cases generated from a backend's declared capabilities against the reference
emulator and reports, per case, passed / failed / not supported / known deviation::

    from portable_fp8.conformance import run_suite
    report = run_suite("cpu", profile="quick")
    assert report.ok, report.failed

Command line: ``portable-fp8 conformance --backend NAME``; pytest:
``pytest --pyargs portable_fp8.conformance --fp8-backend NAME``.
"""

from __future__ import annotations

from .model import Case, CaseResult, Env, Verdict
from .runner import SuiteReport, list_cases, resolve_backend, run_case, run_suite

__all__ = [
    "Case",
    "CaseResult",
    "Env",
    "SuiteReport",
    "Verdict",
    "list_cases",
    "resolve_backend",
    "run_case",
    "run_suite",
]
