"""A self-contained HTML report (no scripts, no external files) for a bring-up ticket.

Sections: summary, failures first (each with its detail and a reproducer), the numerics
fingerprint, the plot of GEMM error against K with the bound (inline SVG drawn here), the
versions and capabilities, and every case in a table.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from ._files import write_text_atomic
from .model import Verdict
from .runner import SuiteReport

__all__ = ["render_html", "write_html", "error_vs_k_svg"]

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;
max-width:1150px}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccc;padding-bottom:4px;
margin-top:28px}
table{border-collapse:collapse;font-size:12px;margin:6px 0}
td,th{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f3f3f3}
.passed{color:#17702a}.failed{color:#b00020;font-weight:bold}
.notsupported{color:#777}.knowndeviation{color:#a66a00}
.summary td{font-size:14px;padding:6px 12px}
pre{background:#f6f6f6;padding:6px;overflow-x:auto;font-size:11px;margin:4px 0}
.fail{border-left:4px solid #b00020;padding:2px 10px;margin:10px 0}
.ok{background:#e6f4ea;padding:8px;border:1px solid #17702a}
.bad{background:#fdecea;padding:8px;border:1px solid #b00020}
code{font-size:12px}
"""


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _cls(verdict: str) -> str:
    return verdict.replace(" ", "")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return "" if v is None else _esc(v)


def error_vs_k_svg(points: list[dict[str, Any]], width: int = 760, height: int = 380) -> str:
    """Log-log plot of measured relative GEMM error (max over elements of |error| /
    sum|a||b|) against K, per data kind, with the bound's relative value as a line."""
    pts = [p for p in points if p.get("k") and p.get("rel_bound")]
    pts = [p for p in pts if math.isfinite(p["rel_bound"]) and math.isfinite(p["rel_err"])]
    if not pts:
        return "<p>No GEMM results with an error bound to plot.</p>"
    left, right, top, bottom = 70, 170, 20, 50
    w, h = width - left - right, height - top - bottom
    ks = [p["k"] for p in pts]
    ys = [p["rel_bound"] for p in pts] + [p["rel_err"] for p in pts if p["rel_err"] > 0]
    kx0, kx1 = math.log2(min(ks)), math.log2(max(ks))
    if kx1 == kx0:
        kx1 = kx0 + 1
    floor = min(ys) / 8
    y0, y1 = math.floor(math.log10(floor)), math.ceil(math.log10(max(ys)))
    if y1 == y0:
        y1 = y0 + 1

    def sx(k: float) -> float:
        return left + (math.log2(k) - kx0) / (kx1 - kx0) * w

    def sy(v: float) -> float:
        v = max(v, 10.0**y0)
        return top + (y1 - math.log10(v)) / (y1 - y0) * h

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11">',
        f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="#fff" stroke="#888"/>',
    ]
    for e in range(y0, y1 + 1):
        y = sy(10.0**e)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + w}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">1e{e}</text>')
    for k in sorted(set(ks)):
        x = sx(k)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + h}" stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{top + h + 16}" text-anchor="middle">{k}</text>')
    out.append(
        f'<text x="{left + w / 2}" y="{height - 8}" text-anchor="middle">K (log scale)</text>'
    )
    out.append(
        f'<text x="16" y="{top + h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 16 {top + h / 2})">max |error| / sum|a||b|</text>'
    )
    # Bound: the largest relative bound at each K, as a line.
    by_k: dict[int, float] = {}
    for p in pts:
        by_k[p["k"]] = max(by_k.get(p["k"], 0.0), p["rel_bound"])
    line = " ".join(f"{sx(k):.1f},{sy(v):.1f}" for k, v in sorted(by_k.items()))
    out.append(f'<polyline points="{line}" fill="none" stroke="#b00020" stroke-width="2"/>')
    colours = ["#1f5fbf", "#17702a", "#a66a00", "#7b3fa0", "#444"]
    kinds = sorted({p.get("data", "") for p in pts})
    for i, kind in enumerate(kinds):
        col = colours[i % len(colours)]
        for p in pts:
            if p.get("data", "") != kind:
                continue
            x, y = sx(p["k"]), sy(p["rel_err"])
            tip = _esc(f"{p.get('id', '')}: {p['rel_err']:.3g} (bound {p['rel_bound']:.3g})")
            out.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{col}" fill-opacity="0.75">'
                f"<title>{tip}</title></circle>"
            )
    lx = left + w + 12
    out.append(
        f'<line x1="{lx}" y1="{top + 10}" x2="{lx + 20}" y2="{top + 10}" stroke="#b00020" '
        f'stroke-width="2"/><text x="{lx + 26}" y="{top + 14}">bound</text>'
    )
    for i, kind in enumerate(kinds):
        y = top + 30 + 18 * i
        col = colours[i % len(colours)]
        out.append(
            f'<circle cx="{lx + 10}" cy="{y}" r="4" fill="{col}"/>'
            f'<text x="{lx + 26}" y="{y + 4}">measured, {_esc(kind)} data</text>'
        )
    out.append(
        f'<text x="{lx}" y="{top + 40 + 18 * len(kinds)}" fill="#777">0 drawn at the</text>'
        f'<text x="{lx}" y="{top + 54 + 18 * len(kinds)}" fill="#777">bottom edge</text>'
    )
    out.append("</svg>")
    return "\n".join(out)


def _fingerprint_html(fp: dict[str, Any]) -> str:
    rows = []
    for key, value in fp.items():
        if isinstance(value, dict):
            inner = "".join(
                f"<tr><td>{_esc(k)}</td><td>{_esc(v)}</td></tr>" for k, v in value.items()
            )
            rows.append(f"<tr><th>{_esc(key)}</th><td><table>{inner}</table></td></tr>")
        else:
            rows.append(f"<tr><th>{_esc(key)}</th><td>{_esc(value)}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def render_html(report: SuiteReport) -> str:
    """The report as one HTML page."""
    counts = report.counts()
    status = (
        f'<p class="bad">Interrupted: only {len(report.records)} case(s) ran; '
        f"{counts['failed']} failed.</p>"
        if report.interrupted
        else '<p class="ok">Conformant: no case failed.</p>'
        if report.ok
        else f'<p class="bad">Not conformant: {counts["failed"]} case(s) failed.</p>'
    )
    summary = "".join(
        f'<td class="{_cls(k)}">{_esc(k)}: <b>{v}</b></td>' for k, v in counts.items()
    )
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>portable-fp8 conformance: {_esc(report.backend)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>portable-fp8 conformance report: backend <code>{_esc(report.backend)}</code></h1>",
        f"<p>Profile <b>{_esc(report.profile)}</b> on device <b>{_esc(report.device)}</b>; "
        f"{len(report.records)} cases in {report.seconds:.1f} s. portable-fp8 "
        f"{_esc(report.versions.get('portable_fp8'))}, torch {_esc(report.versions.get('torch'))},"
        f" Python {_esc(report.versions.get('python'))}.</p>",
    ]
    if report.command:
        parts.append(f"<p>Command: <code>{_esc(report.command)}</code></p>")
    parts += [status, f'<table class="summary"><tr>{summary}</tr></table>']
    if report.unmatched_deviations:
        parts.append(
            "<p>Known deviations that match no case (stale?): "
            + ", ".join(f"<code>{_esc(i)}</code>" for i in report.unmatched_deviations)
            + "</p>"
        )
    failed = report.failed
    parts.append(f"<h2>Failures ({len(failed)})</h2>")
    if not failed:
        parts.append("<p>None.</p>")
    for r in failed[:200]:
        res = r.result
        parts.append(
            f'<div class="fail"><p class="failed">{_esc(r.id)}</p>'
            f"<p>Inputs: {_esc(r.description)}</p><p>{_esc(res.detail)}</p>"
            + (f"<pre>{_esc(res.reproducer)}</pre>" if res.reproducer else "")
            + "</div>"
        )
    if len(failed) > 200:
        parts.append(f"<p>... and {len(failed) - 200} more (see the table below).</p>")
    devs = [r for r in report.records if r.result.verdict is Verdict.KNOWN_DEVIATION]
    if devs:
        parts.append(f"<h2>Known deviations ({len(devs)})</h2><ul>")
        parts += [f"<li><code>{_esc(r.id)}</code>: {_esc(r.result.detail)}</li>" for r in devs]
        parts.append("</ul>")
    parts.append("<h2>Numerics fingerprint (measured, not judged)</h2>")
    parts.append(
        "<p>Probe dot products of exact FP8 values through the backend's scaled_mm (after "
        "Fasi, Higham, Mikaitis and Pranesh, PeerJ CS 2021): fraction bits the accumulator "
        "keeps when the small product sits at a given distance in K from the large one.</p>"
    )
    parts.append(_fingerprint_html(report.fingerprint))
    points = [
        {**r.result.extra, "id": r.id}
        for r in report.records
        if r.kind == "gemm"
        and "rel_err" in r.result.extra
        and "/nn/" in r.id
        and r.result.extra.get("data") in ("positive", "randn")
        and r.result.extra.get("m") == 32
        and "/fast-accum/" not in r.id  # judged by another accumulator's bound
    ]
    parts.append("<h2>GEMM error versus K</h2>")
    acc = report.capabilities.get("accumulator")
    parts.append(
        "<p>32 x K x 32 (fp32 output where declared), declared accumulator: "
        f"<code>{_esc(acc)}</code>. The "
        "line is the analytic bound (gamma_(K+4) of the accumulator plus the output "
        "rounding) relative to sum |a||b|; each point a case's largest error relative to "
        "the same.</p>"
    )
    parts.append(error_vs_k_svg(points))
    parts.append("<h2>Versions and capabilities</h2>")
    parts.append(
        _fingerprint_html({"versions": report.versions, "capabilities": report.capabilities})
    )
    parts.append(f"<h2>All cases ({len(report.records)})</h2>")
    order = {Verdict.FAILED: 0, Verdict.KNOWN_DEVIATION: 1, Verdict.PASSED: 2}
    rows = sorted(report.records, key=lambda r: order.get(r.result.verdict, 3))
    parts.append(
        "<table><tr><th>case</th><th>verdict</th><th>error</th><th>bound</th><th>detail</th></tr>"
    )
    for r in rows:
        v = r.result.verdict.value
        parts.append(
            f"<tr><td><code>{_esc(r.id)}</code></td><td class='{_cls(v)}'>{_esc(v)}</td>"
            f"<td>{_fmt(r.result.error)}</td><td>{_fmt(r.result.bound)}</td>"
            f"<td>{_esc(r.result.detail[:300])}</td></tr>"
        )
    parts.append("</table></body></html>")
    return "\n".join(parts)


def write_html(report: SuiteReport, path: str | Path) -> None:
    """Write the HTML report to ``path``."""
    write_text_atomic(path, render_html(report))
