"""A Markdown summary of a run (renders on code hosts; the HTML report has everything)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._files import write_text_atomic
from .capability_text import capability_rows
from .runner import SuiteReport

__all__ = ["render_markdown", "write_markdown"]


def _cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: SuiteReport) -> str:
    """Summary per kind and verdict, failures with reproducers, fingerprint, versions."""
    v = report.versions
    lines = [
        f"# portable-fp8 conformance: backend `{report.backend}`",
        "",
        f"Profile **{report.profile}** on device **{report.device}**; "
        f"{len(report.records)} cases in {report.seconds:.1f} s: "
        f"**{report.status.upper()}**"
        + (" (stopped before every case ran)." if report.interrupted else "."),
        "",
        f"portable-fp8 {v.get('portable_fp8')}, torch {v.get('torch')}, "
        f"Python {v.get('python')}, {v.get('platform')}, {v.get('cpu_count')} CPUs.",
        "",
    ]
    if report.command:
        lines += [f"Command: `{report.command}`", ""]
    kinds = sorted({r.kind for r in report.records})
    verdicts = list(report.counts())
    lines += ["| kind | " + " | ".join(verdicts) + " |", "|---" * (len(verdicts) + 1) + "|"]
    for kind in kinds:
        recs = [r for r in report.records if r.kind == kind]
        counts = [sum(r.result.verdict.value == x for r in recs) for x in verdicts]
        lines.append(f"| {kind} | " + " | ".join(map(str, counts)) + " |")
    lines.append("| **total** | " + " | ".join(str(n) for n in report.counts().values()) + " |")
    lines += ["", f"## Failures ({len(report.failed)})", ""]
    for r in report.failed[:100]:
        lines += [f"### `{r.id}`", "", f"Inputs: {r.description}", "", r.result.detail, ""]
        if r.result.reproducer:
            lines += ["```python", r.result.reproducer, "```", ""]
    if not report.failed:
        lines += ["None.", ""]
    lines += ["## Numerics fingerprint (measured, not judged)", "", "| probe | result |"]
    lines.append("|---|---|")
    for key, value in report.fingerprint.items():
        if isinstance(value, dict):
            for k, x in value.items():
                lines.append(f"| {_cell(key)}: {_cell(k)} | {_cell(x)} |")
        else:
            lines.append(f"| {_cell(key)} | {_cell(value)} |")
    lines += ["", "## Capabilities", "", "| capability | declared |", "|---|---|"]
    for label, words in capability_rows(report.capabilities):
        lines.append(f"| {_cell(label)} | {_cell(words)} |")
    return "\n".join(lines) + "\n"


def write_markdown(report: SuiteReport, path: str | Path) -> None:
    """Write the Markdown summary to ``path``."""
    write_text_atomic(path, render_markdown(report))
