"""The HTML report of a telemetry JSON-lines file (``portable-fp8 telemetry RUN.jsonl``).

Contract: :func:`write_report` reads records (:class:`~.telemetry.TensorStats`) and writes one
self-contained HTML file: an alert table, then one section per layer -- layers with any
threshold crossed first, in the order of their first crossing (see :func:`flagged_layers`) --
with a table of each role's
statistics and, if matplotlib is installed (the ``examples`` extra), plots of amax,
saturated / flushed-to-zero fractions, relative error and kurtosis over the sampled steps
(PNG, embedded). Without matplotlib the tables are written and the page says that the
plots need it. Nothing is fetched from the network.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from .telemetry import TensorStats, read_jsonl

__all__ = ["add_parser", "flagged_layers", "matplotlib_available", "write_report"]

_ROLE_ORDER = {"input": 0, "weight": 1, "grad_output": 2}
_PLOTS = (
    ("amax", "amax", True),
    ("saturated", "saturated fraction", False),
    ("underflow", "flushed-to-zero fraction", False),
    ("rel_error", "relative error", True),
    ("kurtosis", "kurtosis", True),
)


def matplotlib_available() -> bool:
    """Whether matplotlib can be imported (``pip install 'portable-fp8[examples]'``)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def flagged_layers(records: Sequence[TensorStats]) -> list[str]:
    """Layers with a crossed threshold, in the order of their first crossing in ``records``.

    Records are in the order they were measured (by step; within a step the forward pass's
    input and weight casts in layer order, then the backward pass's gradients), so the
    layer where a problem entered comes before the layers it spread to.
    """
    return list(dict.fromkeys(r.layer for r in records if r.alerts))


def _layer_order(records: Sequence[TensorStats]) -> list[str]:
    flagged = flagged_layers(records)
    seen = dict.fromkeys(r.layer for r in records)
    return flagged + [name for name in seen if name not in flagged]


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}"
    return str(v)


def _table(head: Sequence[str], rows: Sequence[Sequence], cls: Sequence[str] = ()) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = []
    for i, row in enumerate(rows):
        attr = f' class="{cls[i]}"' if i < len(cls) and cls[i] else ""
        body.append(f"<tr{attr}>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row))
    return f"<table><tr>{th}</tr>{''.join(body)}</table>"


def _role_rows(recs: list[TensorStats]) -> tuple[list[list], list[str]]:
    """One row per role of one layer: last values and worst values over the run."""
    by_role: dict[str, list[TensorStats]] = defaultdict(list)
    for r in recs:
        by_role[r.role].append(r)
    rows, cls = [], []
    for role in sorted(by_role, key=lambda k: _ROLE_ORDER.get(k, 9)):
        rs = by_role[role]
        last = rs[-1]
        alerts = sorted({a for r in rs for a in r.alerts})
        rows.append([
            role, f"{last.format} / {last.granularity}", len(rs), last.amax, last.scale_min,
            max(r.saturated for r in rs), max(r.underflow for r in rs), last.subnormal,
            last.rel_error, last.sqnr_db, last.kurtosis, sum(r.nan + r.inf for r in rs),
            ", ".join(alerts) or "-",
        ])  # fmt: skip
        cls.append("alert" if alerts else "")
    return rows, cls


_ROLE_HEAD = ("role", "format / granularity", "samples", "amax (last)", "scale (last, min)",
              "saturated (max)", "flushed to 0 (max)", "subnormal (last)", "rel. error (last)",
              "SQNR dB (last)", "kurtosis (last)", "NaN+inf (total)", "alerts")  # fmt: skip


def _what_if_table(recs: list[TensorStats]) -> str:
    last: dict[str, TensorStats] = {}
    for r in recs:
        if r.what_if:
            last[r.role] = r
    if not last:
        return ""
    keys = sorted({k for r in last.values() for k in r.what_if})
    rows = []
    for role in sorted(last, key=lambda k: _ROLE_ORDER.get(k, 9)):
        r = last[role]
        rows.append([role, r.step, r.rel_error, *[r.what_if.get(k) for k in keys]])
    return "<p>What-if relative errors (last sampled step):</p>" + _table(
        ["role", "step", "actual", *keys], rows
    )


def _plot(layer: str, recs: list[TensorStats]) -> str:
    """An embedded PNG of the layer's statistics over steps, one line per role."""
    from matplotlib.figure import Figure  # no pyplot: leaves the global backend alone

    fig = Figure(figsize=(3.2 * len(_PLOTS), 2.8), layout="constrained")
    axes = fig.subplots(1, len(_PLOTS))
    by_role: dict[str, list[TensorStats]] = defaultdict(list)
    for r in recs:
        by_role[r.role].append(r)
    for ax, (key, title, log) in zip(axes, _PLOTS, strict=True):
        for role in sorted(by_role, key=lambda k: _ROLE_ORDER.get(k, 9)):
            rs = by_role[role]
            ys = [getattr(r, key) for r in rs]
            ys = [y if isinstance(y, (int, float)) and math.isfinite(y) else math.nan for y in ys]
            ax.plot([r.step for r in rs], ys, marker=".", label=role)
        if log and any(math.isfinite(v) and v > 0 for v in (getattr(r, key) for r in recs)):
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"layer {layer}", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    alt = f"statistics of layer {html.escape(layer)}"
    return f'<img alt="{alt}" src="data:image/png;base64,{data}">'


_CSS = """body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px;text-align:right}
th{background:#eee}tr.alert td{background:#fdd}h2{margin-top:1.5em}.note{color:#a60}"""


def write_report(records: Sequence[TensorStats], path, *, plots: bool | None = None) -> Path:
    """Write the HTML report of ``records`` to ``path``; ``plots=None``: if matplotlib is
    installed. Returns the path."""
    path = Path(path)
    plots = matplotlib_available() if plots is None else plots
    by_layer: dict[str, list[TensorStats]] = defaultdict(list)
    for r in records:
        by_layer[r.layer].append(r)
    steps = sorted({r.step for r in records})
    flagged = flagged_layers(records)
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>FP8 telemetry</title>"
        f"<style>{_CSS}</style></head><body><h1>FP8 telemetry</h1>",
        f"<p>{len(records)} records, {len(by_layer)} layers, {len(steps)} sampled steps"
        + (f" ({steps[0]} to {steps[-1]})" if steps else "")
        + f"; {len(flagged)} layers crossed a threshold.</p>",
    ]
    if not plots:
        why = (
            "Plots were turned off"
            if matplotlib_available()
            else "Plots need matplotlib (pip install 'portable-fp8[examples]')"
        )
        parts.append(f"<p class='note'>{why}; this report has the tables only.</p>")
    alerts = [[r.step, r.layer, r.role, ", ".join(r.alerts)] for r in records if r.alerts]
    if alerts:
        parts.append("<h2>Alerts</h2>" + _table(["step", "layer", "role", "thresholds"], alerts))
    for layer in _layer_order(records):
        recs = by_layer[layer]
        mark = " (threshold crossed)" if layer in flagged else ""
        parts.append(f"<h2>layer {html.escape(layer)}{mark}</h2>")
        rows, cls = _role_rows(recs)
        parts.append(_table(_ROLE_HEAD, rows, cls))
        parts.append(_what_if_table(recs))
        if plots:
            parts.append(_plot(layer, recs))
    parts.append("</body></html>\n")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


# --- the subcommand ---------------------------------------------------------------------


def _cmd(args: argparse.Namespace) -> int:
    records = read_jsonl(args.run)
    out = write_report(records, args.report, plots=False if args.no_plots else None)
    flagged = flagged_layers(records)
    names = ", ".join(flagged) or "none"
    print(f"{len(records)} records; layers that crossed a threshold: {names}")
    if not args.no_plots and not matplotlib_available():
        print("plots need matplotlib (pip install 'portable-fp8[examples]'); tables only")
    print(f"report: {out}")
    return 0


def add_parser(sub, formatter_class=argparse.HelpFormatter) -> argparse.ArgumentParser:
    """Register ``telemetry`` on the ``portable-fp8`` subcommand parsers ``sub``."""
    p = sub.add_parser(
        "telemetry",
        help="draw a telemetry JSON-lines file (portable_fp8.nn.telemetry) as an HTML report",
        description="Read a JSON-lines file written by portable_fp8.nn.telemetry.JsonlWriter\n"
        "and write an HTML report: per layer and role, the statistics over the sampled\n"
        "steps (plots if matplotlib is installed), layers that crossed a threshold first.",
        formatter_class=formatter_class,
    )
    p.add_argument("run", metavar="RUN.jsonl", help="the telemetry file")
    p.add_argument(
        "--report", default="telemetry-report.html", metavar="OUT.html",
        help="where to write the HTML report (default: %(default)s)",
    )  # fmt: skip
    p.add_argument("--no-plots", action="store_true", help="tables only, even with matplotlib")
    p.set_defaults(func=_cmd)
    return p
