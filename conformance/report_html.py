"""The self-contained HTML report (no scripts, no external files) for a bring-up ticket.

The page is rendered with jinja2 (autoescape on) from ``templates/report.html.j2``, shipped
as package data; this module prepares plain values for it: the summary and per-kind counts,
failures first with their reproducers, every case grouped by kind in collapsible sections,
the numerics fingerprint and the capabilities in words and tables, and the plot of GEMM
error against K with the bound, drawn here as inline SVG (a few dozen points on log axes
need no plotting library; every text in it is escaped).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from ._files import write_text_atomic
from .capability_text import accumulator_text, capability_rows
from .model import Verdict
from .runner import CaseRecord, SuiteReport

__all__ = ["render_html", "write_html", "error_vs_k_svg"]

#: Failures shown in full (the rest are in their kind's table and the JSON report), and
#: how many of them are opened.
_MAX_FAILURES, _OPEN_FAILURES = 200, 20
#: Characters of a case's detail shown in the per-kind tables.
_DETAIL_CHARS = 300


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _css(verdict: str) -> str:
    return verdict.replace(" ", "")


def _words(v: Any) -> str:
    """A value as people read it: no ``None``, ``True`` or list/dict reprs."""
    if v is None:
        return "not reported"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, Mapping):
        return "; ".join(f"{k}: {_words(x)}" for k, x in v.items()) or "none"
    if isinstance(v, (list, tuple, set, frozenset)):
        return ", ".join(_words(x) for x in v) or "none"
    return str(v)


def _number(v: Any) -> str:
    """An error or bound cell: 3 significant digits, blank where the case measured none."""
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _plottable(points: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(drawable, left out) points of the error-versus-K plot: K > 0, a finite bound > 0
    and a finite error >= 0 (log axes need positive K and bound; an error of 0 is drawn at
    the bottom edge)."""

    def ok(p: dict[str, Any]) -> bool:
        k, err, bound = p.get("k"), p.get("rel_err"), p.get("rel_bound")
        nums = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (k, err, bound))
        return (
            nums
            and k > 0
            and math.isfinite(bound)
            and bound > 0
            and math.isfinite(err)
            and err >= 0
        )

    kept = [p for p in points if ok(p)]
    return kept, [p for p in points if not ok(p)]


def error_vs_k_svg(points: list[dict[str, Any]], width: int = 760, height: int = 380) -> str:
    """Log-log plot of measured relative GEMM error (max over elements of |error| /
    sum|a||b|) against K, per data kind, with the bound's relative value as a line.

    Points whose K, error or bound is missing, not finite, or (K, bound) not positive are
    left out (:func:`_plottable`; the report names them); an error of 0 is drawn at the
    bottom edge. With nothing left, a sentence says so instead of an empty plot."""
    pts, _ = _plottable(points)
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


def _plot_points(report: SuiteReport) -> list[dict[str, Any]]:
    """The K-sweep cases: 32 x K x 32, nn layout, positive or randn data, default
    accumulator (the fast-accum ones are judged by another accumulator's bound)."""
    return [
        {**r.result.extra, "id": r.id}
        for r in report.records
        if r.kind == "gemm"
        and "rel_err" in r.result.extra
        and "/nn/" in r.id
        and r.result.extra.get("data") in ("positive", "randn")
        and r.result.extra.get("m") == 32
        and "/fast-accum/" not in r.id
    ]


def _counts(records: list[CaseRecord]) -> list[dict[str, Any]]:
    return [
        {"verdict": v.value, "css": _css(v.value), "n": sum(r.result.verdict is v for r in records)}
        for v in Verdict
    ]


_ORDER = {Verdict.FAILED: 0, Verdict.KNOWN_DEVIATION: 1, Verdict.PASSED: 2}


def _kinds(report: SuiteReport) -> list[dict[str, Any]]:
    """One section per kind of case, in the suite's order; rows failures first."""
    by_kind: dict[str, list[CaseRecord]] = {}
    for r in report.records:
        by_kind.setdefault(r.kind, []).append(r)
    out = []
    for name, recs in by_kind.items():
        rows = sorted(recs, key=lambda r: _ORDER.get(r.result.verdict, 3))
        failed = sum(r.result.verdict is Verdict.FAILED for r in recs)
        out.append(
            {
                "name": name,
                "counts": _counts(recs),
                "total": len(recs),
                "open": failed > 0,
                "rows": [
                    {
                        "id": r.id,
                        "verdict": r.result.verdict.value,
                        "css": _css(r.result.verdict.value),
                        "error": _number(r.result.error),
                        "bound": _number(r.result.bound),
                        "detail": r.result.detail[:_DETAIL_CHARS]
                        + ("..." if len(r.result.detail) > _DETAIL_CHARS else ""),
                    }
                    for r in rows
                ],
            }
        )
    return out


def _distance_runs(value: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Consecutive distances with one result, merged: ``[("1 to 1024", "23")]``."""
    runs: list[tuple[list[str], str]] = []
    for k, v in value.items():
        text = _words(v)
        if runs and runs[-1][1] == text:
            runs[-1][0].append(str(k))
        else:
            runs.append(([str(k)], text))
    return [(ks[0] if len(ks) == 1 else f"{ks[0]} to {ks[-1]}", text) for ks, text in runs]


def _fingerprint_sections(fp: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each fingerprint entry as text, or as a table: one row of numbers where the keys are
    distances in K and every result is a number, else key and result per row (runs of
    distances with one result merged)."""
    out = []
    for label, value in fp.items():
        if not isinstance(value, Mapping):
            out.append({"label": label, "kind": "text", "text": _words(value)})
            continue
        by_distance = bool(value) and all(str(k).isdigit() for k in value)
        if by_distance and all(isinstance(v, int) for v in value.values()):
            entries = [(k, _words(v)) for k, v in value.items()]
            kind = "row"
        elif by_distance:
            entries, kind = _distance_runs(value), "table"
        else:
            entries, kind = [(k, _words(v)) for k, v in value.items()], "table"
        out.append(
            {
                "label": label,
                "kind": kind,
                "entries": entries,
                "key_label": "distance in K",
                "value_label": "fraction bits",
            }
        )
    return out


def _environment(report: SuiteReport) -> list[tuple[str, str]]:
    v = dict(report.versions)
    described = v.pop("backend_describe", {})
    labels = {
        "portable_fp8": "portable-fp8",
        "torch": "torch",
        "python": "Python",
        "platform": "platform",
        "machine": "machine",
        "cpu_count": "CPUs",
        "torch_threads": "torch threads",
        "device_name": "device name",
    }
    rows = [("backend", report.backend), ("device", report.device)]
    rows += [(labels.get(k, k), _words(x)) for k, x in v.items()]
    if isinstance(described, Mapping):
        rows += [(f"backend: {k}", _words(x)) for k, x in described.items()]
    else:
        rows.append(("backend describe()", _words(described)))
    return rows


def _measured(r: CaseRecord) -> str:
    """A failure's numbers in words: mismatch count of a bit-exact case, else error vs bound."""
    err, bound = r.result.error, r.result.bound
    if err is None:
        return ""
    if bound == 0 and float(err).is_integer():
        return f"{int(err)} elements differ from the reference"
    return f"error {_number(err)} against bound {_number(bound)}"


def _headline(report: SuiteReport, counts: dict[str, int]) -> str:
    if report.interrupted:
        return (
            f"Interrupted: only {len(report.records)} cases ran; {counts['failed']} of them "
            "failed. The verdict is incomplete."
        )
    if report.ok:
        return "Conformant: no case failed."
    return f"Not conformant: {counts['failed']} of {len(report.records)} cases failed."


@cache
def _template():
    import jinja2  # only report writing needs it loaded

    text = resources.files(__package__).joinpath("templates/report.html.j2").read_text("utf-8")
    env = jinja2.Environment(
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True
    )
    return env.from_string(text)


def render_html(report: SuiteReport) -> str:
    """The report as one HTML page (every text escaped)."""
    from markupsafe import Markup

    counts = report.counts()
    points, dropped = _plottable(_plot_points(report))
    device = report.device + (
        f" ({report.versions['device_name']})" if report.versions.get("device_name") else ""
    )
    return _template().render(
        backend=report.backend,
        profile=report.profile,
        device_label=f"device {device}",
        status=report.status,
        headline=_headline(report, counts),
        n_cases=len(report.records),
        seconds=f"{report.seconds:.1f} s",
        command=report.command,
        versions=report.versions,
        counts=_counts(report.records),
        kinds=_kinds(report),
        failures=[
            {
                "id": r.id,
                "description": r.description,
                "detail": r.result.detail,
                "reproducer": r.result.reproducer,
                "measured": _measured(r),
            }
            for r in report.failed
        ],
        max_failures=_MAX_FAILURES,
        open_failures=_OPEN_FAILURES,
        deviations=[
            {"id": r.id, "detail": r.result.detail}
            for r in report.records
            if r.result.verdict is Verdict.KNOWN_DEVIATION
        ],
        unmatched=report.unmatched_deviations,
        fingerprint=_fingerprint_sections(report.fingerprint),
        # error_vs_k_svg escapes every text it draws; the rest of the page is autoescaped
        plot=Markup(error_vs_k_svg(points)),
        plot_dropped=[p.get("id", "?") for p in dropped],
        accumulator=accumulator_text(report.capabilities.get("accumulator", "exact")),
        capabilities=capability_rows(report.capabilities),
        environment=_environment(report),
    )


def write_html(report: SuiteReport, path: str | Path) -> None:
    """Write the HTML report to ``path``."""
    write_text_atomic(path, render_html(report))
