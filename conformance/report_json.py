"""The machine-readable report: one JSON document per run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ._files import write_text_atomic
from .runner import SuiteReport

__all__ = ["report_to_dict", "write_json", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1


def _num(v: float | None) -> float | str | None:
    """JSON has no inf/NaN: spell them as strings."""
    if v is None or (isinstance(v, float) and math.isfinite(v)):
        return v
    if isinstance(v, (int,)):
        return v
    return str(v)


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return _num(obj)
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def report_to_dict(report: SuiteReport) -> dict[str, Any]:
    """The report as plain JSON-ready data (stable keys; see ``SCHEMA_VERSION``)."""
    return _clean(
        {
            "schema_version": SCHEMA_VERSION,
            "backend": report.backend,
            "profile": report.profile,
            "device": report.device,
            "command": report.command,
            "versions": report.versions,
            "capabilities": report.capabilities,
            "summary": report.counts(),
            "ok": report.ok,
            "status": report.status,
            "seconds": round(report.seconds, 3),
            "unmatched_deviations": report.unmatched_deviations,
            "fingerprint": report.fingerprint,
            "cases": [
                {
                    "id": r.id,
                    "kind": r.kind,
                    "inputs": r.description,
                    "verdict": r.result.verdict.value,
                    "error": r.result.error,
                    "bound": r.result.bound,
                    "detail": r.result.detail,
                    "reproducer": r.result.reproducer,
                    "extra": r.result.extra,
                    "input_sha256": r.result.input_sha256,
                    "seconds": round(r.result.seconds, 4),
                }
                for r in report.records
            ],
        }
    )


def write_json(report: SuiteReport, path: str | Path) -> None:
    """Write the JSON report to ``path``."""
    write_text_atomic(path, json.dumps(report_to_dict(report), indent=1) + "\n")
